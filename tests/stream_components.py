"""Components with stream methods, served by worker processes in tests/test_streams.py."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import anyio
import msgspec

from callrt import component, interface, not_retriable


class Event(msgspec.Struct, frozen=True):
    topic: str
    seq: int


class Boom(Exception):
    """Raised mid-stream by a handler."""


def _mark(name: str) -> None:
    """Leave a file that says a generator's ``finally`` ran (the test reads it from another process)."""
    folder = Path(os.environ.get("CALLRT_STREAM_MARKS", tempfile.gettempdir()))
    (folder / name).write_text(str(os.getpid()))


@component(name="tests.Streams", errors=[Boom])
class Streams:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # items produced or consumed so far, by the tag a test chose

    async def progress(self, tag: str) -> int:
        return self.counts.get(tag, 0)

    async def produce(self, tag: str) -> AsyncIterator[int]:
        """As fast as the caller's credit allows, counting what was handed to the connection."""
        i = 0
        while True:
            yield i
            i += 1
            self.counts[tag] = i

    async def consume(self, numbers: AsyncIterator[int], tag: str, gate: float) -> int:
        """Takes the caller's items ``gate`` seconds apart, counting them."""
        total = 0
        async for n in numbers:
            total += n
            self.counts[tag] = self.counts.get(tag, 0) + 1
            await anyio.sleep(gate)
        return total

    async def count(self, n: int, topic: str = "t") -> AsyncIterator[Event]:
        for i in range(n):
            yield Event(topic, i)

    def sync_count(self, n: int) -> Iterator[int]:
        for i in range(n):
            time.sleep(0)  # a plain generator runs in a worker thread: blocking is fine
            yield i

    async def forever(self, mark: str) -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
                await anyio.lowlevel.checkpoint()
        finally:
            _mark(mark)

    async def slow_forever(self, mark: str) -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
                await anyio.sleep(0.01)
        finally:
            _mark(mark)

    @not_retriable
    async def once(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def fail_after(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise Boom("after", n)

    async def big(self, n: int, size: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"x" * size

    async def total(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers])

    async def first_two(self, numbers: AsyncIterator[int]) -> list[int]:
        out = []
        async for n in numbers:
            out.append(n)
            if len(out) == 2:
                break
        return out

    async def slow_total(self, numbers: AsyncIterator[int], delay: float) -> int:
        total = 0
        async for n in numbers:
            total += n
            await anyio.sleep(delay)
        return total

    async def echo(self, words: AsyncIterator[str], suffix: str = "!") -> AsyncIterator[str]:
        async for w in words:
            yield w + suffix

    async def pid(self) -> int:
        return os.getpid()


@interface(name="tests.Feed")
class FeedAPI(Protocol):
    """What a client imports: a server stream declared as a plain def returning AsyncIterator (typed as one)."""

    def count(self, n: int) -> AsyncIterator[int]: ...

    async def total(self, numbers: AsyncIterator[int]) -> int: ...


@component(implements=FeedAPI)
class Feed:
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def total(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers])
