"""Streams (protocol version 3): every shape, flow control seen from both ends, cancellation, errors, old peers.

Real worker processes (the asyncio Protocol server and the trio stream server) and both client
backends. A generator's ``finally`` is observed through a file the worker writes when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from callrt import call
from callrt.call import make_method_key
from callrt.compression import CODECS
from callrt.errors import CommunicationError, DeadlineExceeded, LocalProtocolError, UnknownMethod
from callrt.options import ClientOptions
from callrt.protocol import (
    HELLO_SIZE,
    Credit,
    Error,
    FrameDecoder,
    Hello,
    HelloReply,
    Request,
    Settings,
    decode_hello,
    encode_frame,
    encode_hello,
    encode_hello_reply,
)
from callrt.reflection import ReflectionAPI
from callrt.testing import FaultProxy, Faults, ProxyConnection, WorkerProcess
from tests.stream_components import Boom, Event, FeedAPI, Streams

pytestmark = pytest.mark.anyio

SERVER_WINDOW = 4


@pytest.fixture(scope="module")
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marks")


@pytest.fixture(
    scope="module",
    params=[("asyncio", "protocol"), ("trio", "stream")],
    ids=["server=asyncio", "server=trio"],
)
def worker(request: pytest.FixtureRequest, marks: Path) -> Iterator[WorkerProcess]:
    backend, transport = request.param
    w = WorkerProcess(
        "tcp://127.0.0.1:0",
        ["tests.stream_components:Streams"],
        backend=backend,
        options={"transport": transport, "stream_window": SERVER_WINDOW},
        env={"CALLRT_STREAM_MARKS": str(marks)},
    )
    w.start()
    yield w
    assert w.proc is not None and w.proc.poll() is None, "the server died"
    assert w.stop() == 0


async def wait_for_mark(marks: Path, name: str) -> None:
    """Until the worker has written ``name`` (a generator's finally ran); the test's fail_after bounds it."""
    while not (marks / name).exists():  # noqa: ASYNC110 (another process writes it: no event to wait on)
        await anyio.sleep(0.005)


# -- the shapes ----------------------------------------------------------------------------------


async def test_server_stream_yields_typed_items(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            items = [event async for event in streams.count(5, topic="news")]
            assert items == [Event("news", i) for i in range(5)]
            assert all(type(event) is Event for event in items)
            assert [e async for e in streams.count(0)] == []
            # A plain generator runs in a worker thread, step by step.
            assert [n async for n in streams.sync_count(300)] == list(range(300))
            # More items than any window: credit is granted again as the caller takes them.
            assert [e.seq async for e in streams.count(3000)] == list(range(3000))


async def test_client_stream_takes_any_iterable(worker: WorkerProcess) -> None:
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            assert await streams.total(numbers(2000)) == sum(range(2000))
            assert await streams.total([1, 2, 3]) == 6
            assert await streams.total([]) == 0
            # The handler returns before taking everything: the call ends, the rest is not sent.
            assert await streams.first_two(numbers(10_000)) == [0, 1]


async def test_bidirectional_stream(worker: WorkerProcess) -> None:
    async def words() -> AsyncIterator[str]:
        for w in ("a", "b", "c"):
            yield w

    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            assert [w async for w in streams.echo(words(), suffix="?")] == ["a?", "b?", "c?"]
            async with streams.echo(["x"] * 1000) as echoed:
                assert [w async for w in echoed] == ["x!"] * 1000


async def test_a_bad_item_from_the_caller_fails_the_call_with_invalid_argument(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            with pytest.raises(Exception, match="numbers"):
                await client.stub(Streams).total([1, "two", 3])  # type: ignore[list-item]
            assert await client.stub(Streams).total([1, 2]) == 3


# -- flow control --------------------------------------------------------------------------------


async def test_a_slow_consumer_holds_the_producer_within_the_window(worker: WorkerProcess) -> None:
    window = 8
    with anyio.fail_after(15):
        async with call.connect(worker.endpoint, options=ClientOptions(stream_window=window)) as client:
            streams = client.stub(Streams)
            taken = 0
            async with streams.produce("fast") as produced:
                async for _ in produced:
                    taken += 1
                    # The server's end: what it handed to the connection is bounded by what was
                    # taken plus the window. A unary call on the same connection is not stalled.
                    assert await streams.progress("fast") <= taken + window
                    # The client's end: it never holds more than the window.
                    stream = produced._stream  # pyright: ignore[reportPrivateUsage]
                    assert stream is not None and stream.inbox is not None
                    assert stream.inbox.held <= window
                    if taken == 200:
                        break
            assert await streams.progress("fast") <= 200 + window


async def test_a_slow_handler_holds_the_callers_items_within_its_window(worker: WorkerProcess) -> None:
    pulled = 0

    async def numbers() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(40):
            pulled += 1
            # The caller's iterable is paused by the server's credit, never ahead of the
            # handler by more than its window (and the item being sent).
            assert pulled - await streams.progress("slow") <= SERVER_WINDOW + 2
            yield i

    with anyio.fail_after(15):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            assert await streams.consume(numbers(), "slow", 0.005) == sum(range(40))
            assert pulled == 40


# -- cancellation and errors -----------------------------------------------------------------------


async def test_break_cancels_the_remote_generator(worker: WorkerProcess, marks: Path) -> None:
    mark = f"break-{id(worker)}-{anyio.current_time()}"
    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            async for n in streams.forever(mark):
                if n == 50:
                    break
            await wait_for_mark(marks, mark)
            assert await streams.pid() == worker.proc.pid  # type: ignore[union-attr]


async def test_the_deadline_covers_the_whole_stream(worker: WorkerProcess, marks: Path) -> None:
    mark = f"deadline-{id(worker)}-{anyio.current_time()}"
    seen = 0
    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            expired = False
            with anyio.move_on_after(0.3) as scope:
                try:
                    async for _ in streams.slow_forever(mark):
                        seen += 1
                except DeadlineExceeded:
                    expired = True  # the server, enforcing the deadline the request carried, was first
            assert (scope.cancelled_caught or expired) and seen > 0
            await wait_for_mark(marks, mark)


async def test_a_caller_cancelled_while_waiting_cancels_the_remote_generator(
    worker: WorkerProcess, marks: Path
) -> None:
    mark = f"cancel-{id(worker)}-{anyio.current_time()}"
    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            async with anyio.create_task_group() as tg:

                async def iterate() -> None:
                    async for n in streams.slow_forever(mark):
                        if n == 3:
                            tg.cancel_scope.cancel()

                tg.start_soon(iterate)
            await wait_for_mark(marks, mark)


async def test_a_lost_connection_fails_the_stream_and_runs_the_remote_finally(
    worker: WorkerProcess, marks: Path
) -> None:
    mark = f"lost-{id(worker)}-{anyio.current_time()}"
    assert worker.endpoint is not None
    seen: list[int] = []
    with anyio.fail_after(10):
        async with FaultProxy(str(worker.endpoint)) as proxy:
            async with call.connect(proxy.endpoint) as client:
                with pytest.raises(CommunicationError):
                    async for n in client.stub(Streams).slow_forever(mark):
                        seen.append(n)
                        if n == 3:
                            await proxy.reset_all()
            await wait_for_mark(marks, mark)
    # Items had arrived, so the stream was not retried: no item twice, none after the loss.
    assert seen == list(range(len(seen))) and len(seen) >= 4


@pytest.mark.parametrize("method", ["count", "once"])
async def test_a_stream_lost_before_its_first_item_is_retried_unless_not_retriable(
    worker: WorkerProcess, method: str
) -> None:
    """The first connection is reset as the server's first item comes: nothing of the stream was used,
    so a retriable stream starts again on a new connection; a @not_retriable one had left: it fails."""
    assert worker.endpoint is not None
    first_item_at = HELLO_SIZE + len(encode_frame(Settings(tuple(sorted(CODECS)))))

    def reset_first(connection: ProxyConnection) -> None:
        if connection.number == 1:
            connection.set_faults(Faults(reset_after=first_item_at + 1), "to_client")  # at its first byte

    with anyio.fail_after(10):
        async with FaultProxy(str(worker.endpoint)) as proxy:
            proxy.on_connect = reset_first
            async with call.connect(proxy.endpoint) as client:
                streams = client.stub(Streams)
                if method == "count":
                    assert [e.seq async for e in streams.count(5)] == [0, 1, 2, 3, 4]
                    assert client.retry_counts["retries"] == 1
                else:
                    with pytest.raises(CommunicationError):
                        async for _ in streams.once(5):
                            pass
                    assert client.retry_counts["retries"] == 0
            assert proxy.accepted >= 1 + (method == "count")


async def test_an_error_mid_stream_comes_after_the_items_before_it(worker: WorkerProcess) -> None:
    seen: list[int] = []
    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            with pytest.raises(Boom) as raised:
                async for n in client.stub(Streams).fail_after(5):
                    seen.append(n)  # noqa: PERF401 (the items before the error, kept when it raises)
            assert raised.value.args == ("after", 5)
            assert seen == [0, 1, 2, 3, 4]


async def test_an_error_in_the_callers_items_reaches_the_handler_and_the_caller(worker: WorkerProcess) -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("no more numbers")

    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            with pytest.raises(ValueError, match="no more numbers"):
                await streams.total(failing())
            assert await streams.total([4]) == 4  # the connection serves on


async def test_a_server_deadline_ends_a_stream_with_deadline_exceeded(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            streams = client.stub(Streams)
            with pytest.raises((DeadlineExceeded, TimeoutError)):
                with anyio.fail_after(0.2):
                    await streams.consume([1, 2, 3, 4, 5, 6], "deadline", 0.1)


# -- peers that do not speak streams ------------------------------------------------------------


async def test_a_server_without_streams_fails_a_stream_call_with_a_clear_error() -> None:
    """A version 2 server (before streams): the call fails locally, naming the versions; unary calls work."""

    async def old_server(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            hello = decode_hello(await stream.receive(HELLO_SIZE))
            assert hello.max_version >= 3
            await stream.send(encode_hello_reply(HelloReply(2, 1 << 20)))
            decoder = FrameDecoder(expect=None, version=2)
            while True:
                try:
                    decoder.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                for frame in decoder.frames():
                    assert type(frame) is Request, "a version 2 server got a frame it does not know"
                    await stream.send(encode_frame(Error(frame.id, "unimplemented", "", "not served here")))

    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, old_server)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with call.connect(f"tcp://127.0.0.1:{port}") as client:
                streams = client.stub(Streams)
                with pytest.raises(LocalProtocolError, match="protocol version 2; stream methods need 3"):
                    async for _ in streams.count(3):
                        pass
                with pytest.raises(LocalProtocolError, match="version 2"):
                    await streams.total([1])
                with pytest.raises(UnknownMethod, match="not served here"):
                    await streams.pid()  # unary calls go through as before
            tg.cancel_scope.cancel()


async def test_a_caller_without_streams_gets_a_clear_error_from_a_stream_method(worker: WorkerProcess) -> None:
    """A version 2 client calling a method that became a stream: an ERROR naming the versions, not a protocol error."""
    ep = worker.endpoint
    assert ep is not None
    key = make_method_key("tests.Streams", "count")
    with anyio.fail_after(10):
        stream = await anyio.connect_tcp(ep.host, ep.port)
        async with stream:
            await stream.send(encode_hello(Hello(1, 2, 1 << 20)))
            await stream.send(encode_frame(Request(1, key, msgspec.msgpack.encode([3, "t"]))))
            await stream.send(encode_frame(Credit(1, 10, 1000)))  # a frame version 2 does not have
            decoder = FrameDecoder(expect="hello_reply")
            frames: list[object] = []
            try:
                while True:
                    decoder.receive_data(await stream.receive())
                    frames += decoder.frames()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    assert type(frames[0]) is HelloReply and frames[0].version == 2
    error = frames[1]
    assert type(error) is Error and error.code == "unimplemented"
    assert "stream method" in error.message and "caller speaks 2" in error.message
    assert len(frames) == 2  # then the CREDIT, unknown in version 2, closed the connection


# -- interfaces, reflection, the command line -------------------------------------------------------


async def test_an_interface_declares_streams() -> None:
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.stream_components:Feed"]) as worker, anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            feed = client.stub(FeedAPI)
            assert [n async for n in feed.count(4)] == [0, 1, 2, 3]
            assert await feed.total(range(5)) == 10  # type: ignore[arg-type]  # any iterable goes


async def test_reflection_and_the_cli_know_stream_methods(worker: WorkerProcess) -> None:
    with anyio.fail_after(20):
        async with call.connect(worker.endpoint) as client:
            info = await client.stub(ReflectionAPI).describe()
        methods = {m.name: m for m in info.component("tests.Streams").methods}  # type: ignore[union-attr]
        assert methods["count"].stream == "server" and methods["count"].result == {"$ref": "#/$defs/Event"}
        assert methods["total"].stream == "client" and methods["total"].items == {"type": "integer"}
        assert methods["echo"].stream == "bidirectional"
        assert methods["total"].signature == "total(numbers: AsyncIterator[int]) -> int"
        assert methods["pid"].stream == ""
        printed = await anyio.run_process(
            [sys.executable, "-m", "callrt", "call", str(worker.endpoint), "tests.Streams.count", '[3, "cli"]']
        )
        lines = printed.stdout.decode().splitlines()
        assert [msgspec.json.decode(line) for line in lines] == [{"topic": "cli", "seq": i} for i in range(3)]
        refused = await anyio.run_process(
            [sys.executable, "-m", "callrt", "call", str(worker.endpoint), "tests.Streams.total", "[[1]]"], check=False
        )
        assert refused.returncode == 2 and b"takes a stream of the caller's items" in refused.stderr
