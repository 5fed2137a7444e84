"""The systems under test, each a small module exposing a :class:`System`.

A system provides a server coroutine and a client connection factory; the
measurement loops in :mod:`bench.measure` only ever see :class:`Client`, so
every system is measured by the same code. Modules are imported lazily: a
system whose dependencies are missing (callrt while it is being written) is
reported as unavailable instead of breaking the run.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from bench.common import Address, Loop

__all__ = ("MODULES", "Client", "Connect", "Serve", "System", "load")


@dataclass(frozen=True, slots=True)
class Client:
    """One client connection, as the measurement loops see it.

    :ivar call: echo ``payload``; resolves to the echoed bytes.
    :ivar hold: park a call in the server for ``ms`` milliseconds; ``None`` when
        the system has no such method (its in-flight memory is not measured).
    """

    call: Callable[[bytes], Awaitable[bytes]]
    hold: Callable[[int], Awaitable[object]] | None = None


Serve = Callable[[Address, argparse.Namespace], Awaitable[None]]
Connect = Callable[[Address, argparse.Namespace], AbstractAsyncContextManager[Client]]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


@dataclass(frozen=True, slots=True)
class System:
    """A system under test.

    :ivar serve: listen at the address and echo until cancelled.
    :ivar connect: open one connection (handshake included) to a server.
    :ivar loops: the event loops the system runs on.
    :ivar add_arguments: the system's own flags, accepted by both processes.
    """

    name: str
    serve: Serve
    connect: Connect
    loops: tuple[Loop, ...]
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


MODULES: dict[str, str] = {
    "raw": "bench.systems.raw",
    "grpc": "bench.systems.grpc_aio",
    "callrt": "bench.systems.callrt_rt",
}


def load(name: str) -> System:
    """Import the module of system ``name`` and return its ``SYSTEM``.

    :raises ImportError: the system's dependencies are missing.
    """
    system: System = importlib.import_module(MODULES[name]).SYSTEM
    return system
