"""Components for tests of the last gaps of issues 11 and 12: constrained parameters, abandoned threads."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

import msgspec

from callrt import component, inline, interface

Quantity = Annotated[int, msgspec.Meta(ge=0, le=1000)]
Sku = Annotated[str, msgspec.Meta(min_length=1, max_length=8, pattern="^[a-z0-9]+$")]


@interface(name="tests.Constrained")
class ConstrainedAPI(Protocol):
    async def reserve(self, sku: Sku, qty: Quantity = 1) -> int: ...
    async def reserve_async(self, sku: Sku, qty: Quantity) -> int: ...


@component(implements=ConstrainedAPI)
class Constrained:
    """Parameters with msgspec constraints: the server enforces them before the handler runs."""

    def reserve(self, sku: Sku, qty: Quantity = 1) -> int:
        return qty

    async def reserve_async(self, sku: Sku, qty: Quantity) -> int:
        return qty


class _Gate:
    """Shared by the threads of one worker process: how many run, the most at once, and the gate they wait on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = threading.Event()
        self.running = 0
        self.most = 0
        self.started = 0


_GATE = _Gate()


@interface(name="tests.Blocking")
class BlockingAPI(Protocol):
    async def wait(self) -> str: ...
    async def stats(self) -> tuple[int, int, int, int]: ...
    async def open(self) -> None: ...


@component(implements=BlockingAPI)
class Blocking:
    """A plain def that blocks until the test opens the gate: a slow database call whose caller gave up."""

    def wait(self) -> str:
        gate = _GATE
        with gate.lock:
            gate.running += 1
            gate.started += 1
            gate.most = max(gate.most, gate.running)
        try:
            gate.open.wait(30)  # bounded: a failing test must not leave the worker unable to exit
            return "done"
        finally:
            with gate.lock:
                gate.running -= 1

    @inline
    def stats(self) -> tuple[int, int, int, int]:
        """Handler threads running now, the most that ever ran at once, how many started, live threads."""
        gate = _GATE
        with gate.lock:
            return gate.running, gate.most, gate.started, threading.active_count()

    @inline
    def open(self) -> None:
        _GATE.open.set()


async def passing(call: object, next: Callable[[Any], Awaitable[bytes]]) -> bytes:
    """An interceptor that only passes the call on: with it, every handler runs inside the chain."""
    return await next(call)
