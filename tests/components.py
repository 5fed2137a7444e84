"""Components served by worker processes in the integration tests.

Handlers that the tests need to watch from outside (did it start, was it
cancelled, how often did it run) report through a *marker file* whose path the
test passes as an argument: each event is one appended line
``"<event> <pid> [detail]"``, written with a single ``write`` on a file opened
for appending, so lines from several processes never interleave.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import uuid
from dataclasses import dataclass
from decimal import Decimal

import anyio
import anyio.lowlevel
import msgspec
from opentelemetry import trace

from callrt import component, inline, not_retriable
from callrt.context import current_call
from callrt.errors import ErrorCode, RemoteError


@component(name="tests.Echo")
class Echo:
    @inline  # a small pure function: served on the event loop, the fastest shape
    def echo(self, data: bytes) -> bytes:
        return data


# -- types that travel -------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Point:
    x: int
    y: int


class Item(msgspec.Struct):
    sku: str
    qty: int
    price: Decimal
    tags: list[str] = []


class Bag(msgspec.Struct):
    """One of everything the codec must carry."""

    i: int
    f: float
    s: str
    b: bytes
    flag: bool
    point: Point
    item: Item
    color: Color
    level: Level
    when: dt.datetime
    day: dt.date
    uid: uuid.UUID
    amount: Decimal
    maybe: int | None
    either: int | str
    items: list[Item]
    by_name: dict[str, Point]
    pair: tuple[int, str]


class Mixed(msgspec.Struct):
    """What :meth:`Lab.mixed` received, and the Python types it saw on the server."""

    point: Point
    color: Color
    when: dt.datetime
    uid: uuid.UUID
    amount: Decimal
    maybe: int | None
    either: int | str
    items: list[Item]
    by_name: dict[str, Point]
    types: list[str]


class CallInfo(msgspec.Struct):
    """What a handler learned about its call: :func:`current_call` and the trace context."""

    pid: int
    method: str
    metadata: dict[str, str]
    caller: str
    deadline_left: float | None
    trace_id: str  # hex, as in traceparent
    span_id: str
    trace_flags: int
    tracestate: str
    remote_parent: bool


class Forbidden(RemoteError):
    """An application error with its own code, raised by a handler."""

    default_code = ErrorCode.PERMISSION_DENIED


# -- side channel --------------------------------------------------------------


def note(marker: str, event: str, detail: str = "") -> None:
    line = f"{event} {os.getpid()} {detail}".rstrip() + "\n"
    with open(marker, "a") as f:
        f.write(line)


def events(marker: str) -> list[tuple[str, int, str]]:
    """The lines of a marker file as ``(event, pid, detail)``; none if it does not exist."""
    try:
        with open(marker) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        event, pid, *detail = line.split(" ", 2)
        out.append((event, int(pid), detail[0] if detail else ""))
    return out


def _raise_deep_failure(message: str) -> None:
    raise ValueError(message)


async def _raise_async_failure(message: str) -> None:
    await anyio.lowlevel.checkpoint()  # blocked once: the handler is off the reading path when it raises
    raise LookupError(message)


def _call_info() -> CallInfo:
    call = current_call()
    assert call is not None
    ctx = trace.get_current_span().get_span_context()
    return CallInfo(
        pid=os.getpid(),
        method=call.method,
        metadata=call.metadata,
        caller=call.caller,
        deadline_left=None if call.deadline is None else call.deadline - anyio.current_time(),
        trace_id=f"{ctx.trace_id:032x}",
        span_id=f"{ctx.span_id:016x}",
        trace_flags=int(ctx.trace_flags),
        tracestate=ctx.trace_state.to_header() if ctx.trace_state else "",
        remote_parent=bool(ctx.is_remote),
    )


async def _run_once(marker: str, seconds: float) -> int:
    # Only the first run (over every replica sharing the marker) blocks; a retry returns at once.
    first = not any(e == "start" for e, _, _ in events(marker))
    note(marker, "start")
    if first:
        await anyio.sleep(seconds)
    note(marker, "done")
    return os.getpid()


@component(name="tests.Lab")
class Lab:
    # -- codec ---------------------------------------------------------------

    def add(self, a: int, b: int) -> int:
        return a + b

    async def add_async(self, a: int, b: int) -> int:
        return a + b

    def bag(self, bag: Bag) -> Bag:
        assert isinstance(bag, Bag)
        return bag

    async def bag_async(self, bag: Bag) -> Bag:
        await anyio.lowlevel.checkpoint()
        assert isinstance(bag, Bag)
        return bag

    def mixed(
        self,
        point: Point,
        color: Color,
        when: dt.datetime,
        uid: uuid.UUID,
        amount: Decimal,
        maybe: int | None,
        either: int | str,
        items: list[Item],
        by_name: dict[str, Point],
    ) -> Mixed:
        seen = [point, color, when, uid, amount, maybe, either, *items, *by_name.values()]
        return Mixed(point, color, when, uid, amount, maybe, either, items, by_name, [type(v).__name__ for v in seen])

    def nothing(self) -> None:
        return None

    # -- concurrency ---------------------------------------------------------

    async def ident(self, i: int, delay: float) -> int:
        if delay:
            await anyio.sleep(delay)
        return i

    def ident_sync(self, i: int) -> int:
        return i

    def pid(self) -> int:
        return os.getpid()

    # -- errors --------------------------------------------------------------

    def fail(self, message: str) -> None:
        _raise_deep_failure(message)

    async def fail_async(self, message: str) -> None:
        await _raise_async_failure(message)

    def deny(self, who: str) -> None:
        raise Forbidden(f"{who} may not")

    def deny_with(self, code: str, message: str) -> None:
        raise RemoteError(message, code=ErrorCode(code))

    # -- deadlines, cancellation, context --------------------------------------

    async def nap(self, seconds: float, marker: str) -> int:
        """Sleep, reporting start, deadline, cancellation and completion to ``marker``."""
        call = current_call()
        left = "none" if call is None or call.deadline is None else repr(call.deadline - anyio.current_time())
        note(marker, "start", left)
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            note(marker, "cancelled")
            raise
        note(marker, "done")
        return os.getpid()

    @inline  # reads the loop's clock (anyio.current_time), which a worker thread has not
    def context(self) -> CallInfo:
        return _call_info()

    async def context_async(self) -> CallInfo:
        # Blocks long enough for the server to hand its reading path to a new task.
        await anyio.sleep(0.002)
        return _call_info()

    # -- retries ---------------------------------------------------------------

    async def once(self, marker: str, seconds: float) -> int:
        return await _run_once(marker, seconds)

    def crash(self, marker: str) -> None:
        """Take the whole server down mid-call: the caller sees a communication error."""
        note(marker, "start")
        os._exit(3)

    @not_retriable
    async def once_unsafe(self, marker: str, seconds: float) -> int:
        return await _run_once(marker, seconds)
