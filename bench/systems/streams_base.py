"""What :mod:`bench.streams` sees of a system that serves a server stream.

A stream system is a module exposing ``STREAM_SYSTEM``, a :class:`StreamSystem`:
``serve`` listens and serves a stream of fixed-size items (as fast as the
system's flow control lets it produce them) until cancelled; ``connect``
opens what a client needs and yields a :class:`StreamClient`. The
measurement code (in :mod:`bench.streams`) counts items through a
:class:`Tally`; nothing else of a system is visible to it.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from bench.common import Address, Loop

__all__ = ("STREAM_MODULES", "StreamClient", "StreamSystem", "Tally", "load_stream_system")


class Tally:
    """Items received so far, over every stream of a client process (one event loop: no lock)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


@dataclass(frozen=True, slots=True)
class StreamClient:
    """A client of a stream system, as the measurement loops see it.

    :ivar run: open one stream of ``size``-byte items and add each item received to the
        tally, until cancelled (the stream is then closed, the server's producer stopped).
    :ivar call: a unary echo, for the system's own unary figure (``None``: not measured).
    :ivar items: one stream of ``size``-byte items as an async iterator, for a consumer that
        paces itself (``None``: no memory figure); closed by ``aclose``.
    :ivar produced: how many items the server's producer has handed to its connection so far,
        over all streams (``None``: not known).
    """

    run: Callable[[int, Tally], Coroutine[Any, Any, None]]
    call: Callable[[bytes], Awaitable[bytes]] | None = None
    items: Callable[[int], AsyncIterator[bytes]] | None = None
    produced: Callable[[], Awaitable[int]] | None = None


StreamServe = Callable[[Address, argparse.Namespace], Awaitable[None]]
StreamConnect = Callable[[Address, argparse.Namespace], AbstractAsyncContextManager[StreamClient]]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


@dataclass(frozen=True, slots=True)
class StreamSystem:
    """A system under test for streams: ``serve`` and ``connect`` as in :class:`bench.systems.System`."""

    name: str
    serve: StreamServe
    connect: StreamConnect
    loops: tuple[Loop, ...] = ("uvloop", "asyncio")
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


STREAM_MODULES: dict[str, str] = {
    "raw": "bench.systems.streams_raw",
    "grpc": "bench.systems.streams_grpc",
    "callrt": "bench.systems.streams_callrt",
}


def load_stream_system(name: str) -> StreamSystem:
    """Import the module of stream system ``name`` and return its ``STREAM_SYSTEM``.

    :raises ImportError: the system's dependencies are missing.
    """
    system: StreamSystem = importlib.import_module(STREAM_MODULES[name]).STREAM_SYSTEM
    return system
