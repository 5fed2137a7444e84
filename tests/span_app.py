"""``python -m tests.span_app``: a two-hop app (client -> Front -> Back, in memory) with the OpenTelemetry
SDK configured; prints the finished spans as JSON lines, for tests/test_spans.py to read."""

from __future__ import annotations

import json

import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callrt import call, component


@component(name="spans.Back")
class Back:
    async def double(self, n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return 2 * n


@component(name="spans.Front")
class Front:
    def __init__(self, back: Back) -> None:
        self.back = back

    async def quadruple(self, n: int) -> int:
        return 2 * await self.back.double(n)


async def main() -> None:
    async with call.start_server("memory://back", Back()), call.connect("memory://back") as to_back:
        async with call.start_server("memory://front", Front(to_back.stub(Back))):
            async with call.connect("memory://front") as client:
                front = client.stub(Front)
                assert await front.quadruple(3) == 12
                try:
                    await to_back.stub(Back).double(-1)
                except Exception:
                    pass


if __name__ == "__main__":
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    anyio.run(main)
    for span in exporter.get_finished_spans():
        ctx, parent = span.get_span_context(), span.parent
        print(
            json.dumps(
                {
                    "name": span.name,
                    "kind": span.kind.name,
                    "trace": f"{ctx.trace_id:032x}",
                    "id": f"{ctx.span_id:016x}",
                    "parent": None if parent is None else f"{parent.span_id:016x}",
                    "attributes": dict(span.attributes or {}),
                    "status": span.status.status_code.name,
                }
            )
        )
