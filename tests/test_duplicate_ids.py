"""A request id reused while its call is still running ends that connection, and only it.

Found by an adversarial probe: on the stream transport the second request
overwrote the first one's cancel scope, the second ``del`` raised ``KeyError``
through the connection's and the server's task groups, and the worker exited;
on the asyncio Protocol path it killed the connection's dispatcher task, so
later async calls on that connection never ran.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import msgspec
import pytest

from callrt import call
from callrt.call import make_method_key
from callrt.protocol import HELLO_SIZE, Hello, Request, encode_frame, encode_hello
from callrt.testing import WorkerProcess
from tests.components import Echo, Lab

pytestmark = pytest.mark.anyio

MAX_FRAME = 1 << 20
IDENT_KEY = make_method_key("tests.Lab", "ident")


@pytest.fixture(
    scope="module",
    params=[("asyncio", "protocol"), ("asyncio", "stream"), ("trio", "stream")],
    ids=["server=asyncio-protocol", "server=asyncio-stream", "server=trio"],
)
def worker(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    backend, transport = request.param
    options = {"transport": transport, "max_frame_size": MAX_FRAME}
    w = WorkerProcess(
        "tcp://127.0.0.1:0", ["tests.components:Echo", "tests.components:Lab"], backend=backend, options=options
    )
    w.start()
    yield w
    assert w.proc is not None and w.proc.poll() is None, "the server died"
    assert w.stop() == 0


def ident(request_id: int, value: int, delay: float) -> bytes:
    return encode_frame(Request(request_id, IDENT_KEY, msgspec.msgpack.encode((value, delay))))


async def test_reused_id_of_a_running_call_closes_only_that_connection(worker: WorkerProcess) -> None:
    ep = worker.endpoint
    assert ep is not None
    with anyio.fail_after(10):
        async with call.connect(call.ConstantResolver([str(ep)])) as conn:
            lab, echo = conn.stub(Lab), conn.stub(Echo)
            for _ in range(3):  # the same attack again: each time the server lives on
                stream = await anyio.connect_tcp(ep.host, ep.port)
                async with stream:
                    # Both calls block in the handler, so the first is still running when the second arrives.
                    await stream.send(encode_hello(Hello(1, 1, MAX_FRAME)) + ident(5, 1, 0.3) + ident(5, 2, 0.3))
                    received = bytearray()
                    while True:
                        try:
                            received += await stream.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            break
                assert len(received) == HELLO_SIZE, "the server answered on a connection that broke the protocol"
                # Async calls (the ones a dead dispatcher would strand) and sync calls still work.
                assert await lab.ident(7, 0.01) == 7
                assert await echo.echo(b"after") == b"after"
    assert worker.proc is not None and worker.proc.poll() is None
