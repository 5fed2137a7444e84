"""Components for the stream, fan-out and affinity telemetry and interceptor tests, served by worker processes.

:class:`TracedStreams` has a method of each call shape the tests need, and
reports the metadata its handlers see. :class:`Spans`, when a worker serves it,
configures the OpenTelemetry SDK in that worker (in its ``__init__``: a process
that only makes stubs of it never does) and gives back the spans the worker
finished, so that a test sees both ends of a trace across processes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import msgspec
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from callrt import affinity, call, component


class Boom(Exception):
    """Raised by a handler: declared, so the caller gets it back by type."""


class EventInfo(msgspec.Struct, frozen=True):
    """An event of a finished span (a retry's, say), with its attributes."""

    name: str
    attributes: dict[str, str | int | float | bool]


class SpanInfo(msgspec.Struct, frozen=True):
    """A finished span, as the tests compare them across processes."""

    name: str
    kind: str
    trace: str
    id: str
    parent: str | None
    attributes: dict[str, str | int | float | bool]
    status: str
    events: list[EventInfo]


def span_info(span: ReadableSpan) -> SpanInfo:
    ctx, parent = span.get_span_context(), span.parent
    assert ctx is not None
    return SpanInfo(
        name=span.name,
        kind=span.kind.name,
        trace=f"{ctx.trace_id:032x}",
        id=f"{ctx.span_id:016x}",
        parent=None if parent is None else f"{parent.span_id:016x}",
        attributes=dict(span.attributes or {}),  # type: ignore[arg-type]
        status=span.status.status_code.name,
        events=[EventInfo(event.name, dict(event.attributes or {})) for event in span.events],  # type: ignore[arg-type]
    )


def _claim_one(self: TracedStreams) -> float:
    return 1.0


@component(name="tests.TracedStreams", errors=[Boom])
class TracedStreams:
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def fail_after(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise Boom("after", n)

    async def forever(self) -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1
            await anyio.lowlevel.checkpoint()

    async def total(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers])

    async def failing_total(self, numbers: AsyncIterator[int]) -> int:
        async for _ in numbers:
            pass
        raise Boom("total")

    async def metadata(self) -> AsyncIterator[str]:
        """The metadata the handler sees, as ``key=value`` items."""
        current = call.current_call()
        assert current is not None
        for key, value in sorted(current.metadata.items()):
            yield f"{key}={value}"

    async def metadata_total(self, numbers: AsyncIterator[int]) -> dict[str, str]:
        """Takes the caller's items, then says what metadata the handler saw."""
        async for _ in numbers:
            pass
        current = call.current_call()
        assert current is not None
        return dict(current.metadata)

    async def tagged(self, words: AsyncIterator[str]) -> AsyncIterator[str]:
        """Bidirectional: each word, tagged with the ``tenant`` the handler sees in its metadata."""
        current = call.current_call()
        assert current is not None
        async for word in words:
            yield f"{word}:{current.metadata.get('tenant')}"

    @affinity(_claim_one)
    async def whoami(self) -> str:
        return "here"


class _Collect(SpanProcessor):
    """Keeps finished spans and wakes whoever waits for more (called on the event loop's thread)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.ended: anyio.Event | None = None

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)
        if self.ended is not None:
            self.ended.set()


@component(name="tests.Spans")
class Spans:
    def __init__(self) -> None:
        self._collect = _Collect()
        provider = TracerProvider()
        provider.add_span_processor(self._collect)
        trace.set_tracer_provider(provider)

    async def finished(self, names: list[str], at_least: int) -> str:
        """The finished spans named in ``names`` (JSON), once there are ``at_least`` of them.

        A caller's stream can end before the server's span does (the server ends it after its
        last frame, or when it sees a cancel): this waits for it, within the caller's deadline.
        """
        while True:
            found = [span for span in self._collect.spans if span.name in names]
            if len(found) >= at_least:
                return json.dumps([msgspec.to_builtins(span_info(span)) for span in found])
            self._collect.ended = anyio.Event()
            await self._collect.ended.wait()
