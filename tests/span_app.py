"""``python -m tests.span_app``: a two-hop app (client -> Front -> Back, in memory) with the OpenTelemetry
SDK configured; prints the finished spans and the metrics as JSON lines, for tests/test_spans.py to read.

Then three more calls of Back: one over TCP whose first attempt is lost (the connection drops on the
request) and retried, one that can reach no server, and one over a Unix socket."""

from __future__ import annotations

import json
import tempfile

import anyio

from callrt import call, component
from callrt.balancers import BalancerFunc
from callrt.client import ReplicaState
from callrt.options import ClientOptions

from .lifecycle_components import FakeServer
from .support import install_sdk, print_metrics


@component(name="spans.Back")
class Back:
    waiting = anyio.Event()  # set when ``wait`` is running

    async def double(self, n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return 2 * n

    async def wait(self) -> None:
        Back.waiting.set()
        await anyio.sleep_forever()


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
                async with anyio.create_task_group() as tg:  # a call its caller gives up on
                    tg.start_soon(to_back.stub(Back).wait)
                    await Back.waiting.wait()
                    tg.cancel_scope.cancel()
    await retried_over_tcp()
    try:
        async with call.connect("memory://nowhere", options=ClientOptions(pick_timeout=0.1)) as nowhere:
            await nowhere.stub(Back).double(1)  # no server: fails before any attempt
    except Exception:
        pass
    with tempfile.TemporaryDirectory() as directory:
        address = f"unix://{directory}/back.sock"
        async with call.start_server(address, Back()), call.connect(address) as over_unix:
            assert await over_unix.stub(Back).double(4) == 8


async def retried_over_tcp() -> None:
    """A call sent first to a peer that drops the connection on the request, then to Back over TCP."""
    async with call.start_server("tcp://127.0.0.1:0", Back()) as back, FakeServer("drop_on_request", once=True) as fake:
        assert fake.endpoint is not None
        first = fake.endpoint
        prefer_fake = BalancerFunc(
            lambda replicas, options: next((r for r in replicas if r.endpoint == first), replicas[0])
        )
        resolver = call.ConstantResolver([first, back.endpoint])
        async with call.connect(resolver, options=ClientOptions(balancer=prefer_fake)) as conn:
            with anyio.fail_after(10):
                # Polling: the connections are made by the client's own tasks, over sockets.
                while any(r.state is not ReplicaState.AVAILABLE for r in conn.replicas.values()):  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # both connected: the first attempt goes to the fake
            assert await conn.stub(Back).double(5) == 10
            print(json.dumps({"tcp_port": back.endpoint.port}))


if __name__ == "__main__":
    exporter, reader = install_sdk()
    anyio.run(main)
    print_metrics(reader)
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
                    "events": [event.name for event in span.events],
                }
            )
        )
