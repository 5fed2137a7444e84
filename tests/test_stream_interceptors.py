"""Client interceptors on stream calls: a client stream's whole call, a server or bidirectional stream's opening.

A worker process serves tests.TracedStreams with a server interceptor (``stamp_peer``), so the
handlers' ``current_call().metadata`` shows that server interceptors run for stream calls too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from callrt import call, errors
from callrt.interceptors import ClientCall, ClientNext
from callrt.testing import WorkerProcess
from tests.stream_span_components import TracedStreams
from tests.support import recording_client

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module", params=["asyncio", "trio"], ids=["server=asyncio", "server=trio"])
def worker(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    options = {"interceptors": ["tests.interceptor_components:stamp_peer"]}
    components = ["tests.stream_span_components:TracedStreams"]
    with WorkerProcess("tcp://127.0.0.1:0", components, backend=request.param, options=options) as w:
        yield w


async def test_the_chain_runs_in_order_around_a_streams_opening_and_a_client_streams_call(
    worker: WorkerProcess,
) -> None:
    log: list[str] = []
    options = call.ClientOptions(interceptors=(recording_client("c1", log), recording_client("c2", log)))
    with anyio.fail_after(10):
        async with call.connect(worker.endpoint, options=options) as client:
            streams = client.stub(TracedStreams)
            replica = str(worker.endpoint)

            def expected(method: str) -> list[str]:
                full = f"tests.TracedStreams.{method}"
                return [
                    f"c1 in {full} replica=None",
                    f"c2 in {full} replica=None",
                    f"c2 out replica={replica}",
                    f"c1 out replica={replica}",
                ]

            # A server stream: the chain wraps its opening, done by the time the first item comes.
            async with streams.count(3) as items:
                assert await items.__anext__() == 0
                assert log == expected("count")
                assert [i async for i in items] == [1, 2]
            assert log == expected("count")  # once per stream
            log.clear()
            # A client stream is awaited like a unary call: the chain wraps the whole call.
            assert await streams.total([1, 2, 3]) == 6
            assert log == expected("total")
            log.clear()
            assert [w async for w in streams.tagged(["a"])] == ["a:None"]
            assert log == expected("tagged")


async def test_a_client_interceptor_rejects_a_stream_call(worker: WorkerProcess) -> None:
    refused: list[str] = []

    async def refuse(call: ClientCall, next: ClientNext) -> Any:
        if call.method.endswith(("metadata", "metadata_total")):
            refused.append(call.method)
            raise errors.PermissionDenied(f"{call.method}: not from this client")
        return await next(call)

    with anyio.fail_after(10):
        async with call.connect(worker.endpoint, options=call.ClientOptions(interceptors=(refuse,))) as client:
            streams = client.stub(TracedStreams)
            with pytest.raises(errors.PermissionDenied, match="metadata: not from this client"):
                async for _ in streams.metadata():
                    pass
            with pytest.raises(errors.PermissionDenied, match="metadata_total: not from this client"):
                await streams.metadata_total([1])
            with pytest.raises(errors.PermissionDenied):
                async with streams.metadata():
                    pass
            assert [i async for i in streams.count(2)] == [0, 1]  # others pass
    assert refused == [f"tests.TracedStreams.{m}" for m in ("metadata", "metadata_total", "metadata")]


async def test_metadata_and_arguments_the_chain_passes_on_reach_the_handler(worker: WorkerProcess) -> None:
    async def tenant(call: ClientCall, next: ClientNext) -> Any:
        if call.method.endswith(".count"):
            call = dataclasses.replace(call, args=(call.args[0] + 1,))  # a changed argument is sent
        return await next(call.with_metadata({"tenant": "t1"}))

    with anyio.fail_after(10):
        async with call.connect(worker.endpoint, options=call.ClientOptions(interceptors=(tenant,))) as client:
            streams = client.stub(TracedStreams)
            seen = [item async for item in streams.metadata()]
            # The server's interceptor (stamp_peer) ran too, and the handler sees its copy of the call.
            assert "tenant=t1" in seen and "seen_by=server" in seen
            total = await streams.metadata_total([1, 2])
            assert total["tenant"] == "t1" and total["seen_by"] == "server"
            assert [w async for w in streams.tagged(["a", "b"])] == ["a:t1", "b:t1"]
            assert [i async for i in streams.count(2)] == [0, 1, 2]
            # The caller's own metadata is kept beside the chain's.
            mine = call.with_options(streams, call.CallOptions(metadata={"request": "r1"}))
            assert {"request=r1", "tenant=t1"} <= {item async for item in mine.metadata()}
