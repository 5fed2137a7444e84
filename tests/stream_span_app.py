"""``python -m tests.stream_span_app BACKEND``: stream, fan-out and affinity calls with the OpenTelemetry SDK
configured, against two worker processes that have it configured too (tests/stream_span_components.py).

One stream goes through a :class:`~callrt.testing.FaultProxy` that resets its first connection when
the stream's request reaches it, so that its opening is retried on a second connection; one affinity
call asks for more than any replica claims, so that it fails with ``NoClaim``.

Each scenario runs under a span of the app's own, named after it, so that tests/test_stream_spans.py
can find its spans. Prints the app's finished spans, each worker's, the workers' endpoints and the
app's metrics as JSON lines.
"""

from __future__ import annotations

import json
import sys

import anyio
import msgspec
from opentelemetry import trace

from callrt import call
from callrt.call import Selection
from callrt.endpoints import Endpoint
from callrt.errors import NoClaim
from callrt.testing import FaultProxy, Faults, ProxyConnection, WorkerProcess

from .stream_span_components import Boom, Spans, TracedStreams, span_info
from .support import install_sdk, print_metrics

STREAMS = "tests.TracedStreams"
#: Per worker, the SERVER spans the app waits for before it asks for them (see Spans.finished).
SERVED = {0: 12, 1: 3}  # the first: 9 streams, a fan-out request and two claims; the second: the last three
#: Bytes of the client's hello (docs/protocol.md, section 1): the stream's request is the first frame after it.
HELLO = 12


def reset_on_first_request(connection: ProxyConnection) -> None:
    """The proxy's first connection is reset when the client's first frame after its hello reaches it.

    Nothing of that frame is forwarded (dropped from the hello's end on, reset at its first byte):
    the server never sees the request, the client sees its connection reset.
    """
    if connection.number == 1:
        connection.set_faults(Faults(drop_after=HELLO, reset_after=HELLO + 1), "to_server")


async def scenarios(endpoints: list[Endpoint]) -> None:
    tracer = trace.get_tracer("tests.stream_span_app")
    async with call.connect(endpoints[0]) as client:
        streams = client.stub(TracedStreams)
        with tracer.start_as_current_span("server stream"):
            assert [i async for i in streams.count(3)] == [0, 1, 2]
        with tracer.start_as_current_span("client stream"):
            assert await streams.total([1, 2, 3]) == 6
        with tracer.start_as_current_span("bidirectional"):
            assert len([w async for w in streams.tagged(["a", "b"])]) == 2
        with tracer.start_as_current_span("server stream fails"):
            items = streams.fail_after(2)
            assert [await items.__anext__(), await items.__anext__()] == [0, 1]
            try:
                await items.__anext__()
            except Boom:
                pass
            else:
                raise AssertionError("fail_after did not fail")
        with tracer.start_as_current_span("client stream fails"):
            try:
                await streams.failing_total([1, 2])
            except Boom:
                pass
            else:
                raise AssertionError("failing_total did not fail")
        with tracer.start_as_current_span("break"):
            async with streams.forever() as items:
                async for _ in items:
                    break
        with tracer.start_as_current_span("aclose"):
            forever = await streams.forever()
            assert await forever.__anext__() == 0
            await forever.aclose()
        with tracer.start_as_current_span("cancelled"), anyio.CancelScope() as scope:
            async for _ in streams.forever():
                scope.cancel()  # the next wait for an item is cancelled
        assert scope.cancelled_caught

    async with FaultProxy(endpoints[0]) as proxy:
        proxy.on_connect = reset_on_first_request
        print(json.dumps({"proxy": int(proxy.endpoint.rpartition(":")[2])}))
        # No health checks: nothing but the stream's request is sent after the first connection's hello.
        async with call.connect(proxy.endpoint, options=call.ClientOptions(health_interval=None)) as through_proxy:
            with tracer.start_as_current_span("stream retried"):
                assert [i async for i in through_proxy.stub(TracedStreams).count(2)] == [0, 1]
        assert proxy.accepted == 2  # the first connection, reset, and the one the retry opened

    async with call.connect(endpoints) as both:
        with tracer.start_as_current_span("fan-out"):
            replies = [reply async for reply in both.multi(TracedStreams).whoami()]
            assert sorted(reply.result() for reply in replies) == ["here", "here"]
        with tracer.start_as_current_span("affinity"):
            assert await both.by_affinity(TracedStreams).whoami() == "here"
        with tracer.start_as_current_span("no claim"):
            try:  # each replica claims 1.0: below the minimum
                await both.by_affinity(TracedStreams, Selection(minimum=2.0)).whoami()
            except NoClaim:
                pass
            else:
                raise AssertionError("an affinity call no replica claimed did not fail")

    names = [f"{STREAMS}/{m}" for m in ("count", "total", "tagged", "fail_after", "failing_total", "forever", "whoami")]
    names.append("callrt.Affinity/claim")
    for i, endpoint in enumerate(endpoints):
        async with call.connect(endpoint) as client:
            for span in json.loads(await client.stub(Spans).finished(names, SERVED[i])):
                print(json.dumps({"side": "server", "worker": i, **span}))


def main(backend: str) -> None:
    exporter, reader = install_sdk()
    components = ["tests.stream_span_components:TracedStreams", "tests.stream_span_components:Spans"]
    with (
        WorkerProcess("tcp://127.0.0.1:0", components, backend=backend) as first,
        WorkerProcess("tcp://127.0.0.1:0", components, backend=backend) as second,
    ):
        endpoints = [first.endpoint, second.endpoint]
        assert endpoints[0] is not None and endpoints[1] is not None
        print(json.dumps({"endpoints": [[e.host, e.port] for e in endpoints if e is not None]}))

        async def run() -> None:
            with anyio.fail_after(30):
                await scenarios([e for e in endpoints if e is not None])

        anyio.run(run, backend=backend)
    for span in exporter.get_finished_spans():
        print(json.dumps({"side": "client", **msgspec.to_builtins(span_info(span))}))
    print_metrics(reader)


if __name__ == "__main__":
    main(sys.argv[1])
