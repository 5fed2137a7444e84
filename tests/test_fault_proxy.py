"""callrt.testing.FaultProxy: what it does to bytes, then what callrt does about it.

The first half checks the proxy on its own, between two sockets the test holds
(TCP and Unix). The second half puts it between a callrt client and a real
worker process: transparent at first, then retries, keepalive, deadlines,
drains and protocol errors, each of which fails with a proxy whose faults do
nothing (checked by patching them out). The last test covers a gap in callrt's
keepalive the proxy found (bytes after a ping counted as an answer).

Waits on another process (a marker file) or on the client's replica state poll
with a deadline; waits on the proxy use its events. Every test is bounded.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream

from callrt import call, errors
from callrt.compression import CODECS
from callrt.protocol import Settings, encode_frame
from callrt.testing import FaultProxy, Faults, ProxyConnection, WorkerProcess
from tests.components import Echo, Lab, events

pytestmark = pytest.mark.anyio

COMPONENTS = ["tests.components:Echo", "tests.components:Lab"]
HELLO = 12  # bytes of the client's hello and of the server's reply (docs/protocol.md, section 1)
KIND = 4  # offset of a frame's kind byte (section 2)
# The server's SETTINGS frame, which follows its hello reply (version 3; the worker has this venv's codecs).
SETTINGS = len(encode_frame(Settings(tuple(sorted(CODECS)))))
# Where the first frame after the handshake starts, in each direction.
FIRST_FRAME = {"to_server": HELLO, "to_client": HELLO + SETTINGS}


# -- the proxy between two sockets the test holds ---------------------------------------------------


def _url(kind: str, sockdir: Path) -> str:
    return "tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{sockdir}/{uuid.uuid4().hex[:8]}.sock"


async def _connect(url: str) -> ByteStream:
    scheme, _, rest = url.partition("://")
    if scheme == "unix":
        return await anyio.connect_unix(rest)
    host, _, port = rest.rpartition(":")
    return await anyio.connect_tcp(host, int(port))


@asynccontextmanager
async def upstream(kind: str, sockdir: Path) -> AsyncIterator[tuple[str, MemoryObjectReceiveStream[ByteStream]]]:
    """A listener; yields its URL and a stream of the server-side sockets it accepts."""
    url = _url(kind, sockdir)
    if kind == "tcp":
        listener: Any = await anyio.create_tcp_listener(local_host="127.0.0.1")
        url = f"tcp://127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}"
    else:
        listener = await anyio.create_unix_listener(url.partition("://")[2])
    send, accepted = anyio.create_memory_object_stream[ByteStream](16)
    async with listener, send, accepted, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, send.send)
        yield url, accepted
        tg.cancel_scope.cancel()


async def read(stream: ByteStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += await stream.receive(n - len(data))
    return data


class Pair:
    """A client socket through the proxy, and the server socket it reached."""

    def __init__(self, client: ByteStream, server: ByteStream, conn: ProxyConnection) -> None:
        self.client, self.server, self.conn = client, server, conn


@asynccontextmanager
async def pairs(
    listen: str = "tcp", up: str = "tcp", *, sockdir: Path, **proxy_kw: Any
) -> AsyncIterator[tuple[FaultProxy, Callable[[], Any]]]:
    """A proxy to an upstream listener, and ``open()`` making a :class:`Pair` through it."""
    async with AsyncExitStack() as stack:
        url, accepted = await stack.enter_async_context(upstream(up, sockdir))
        proxy = await stack.enter_async_context(FaultProxy(url, listen=_url(listen, sockdir), **proxy_kw))

        async def open_pair() -> Pair:
            number = proxy.accepted + 1
            client = await stack.enter_async_context(await _connect(proxy.endpoint))
            await proxy.wait_accepted(number)
            (conn,) = [c for c in proxy.connections if c.number == number]
            server = await stack.enter_async_context(await accepted.receive())
            return Pair(client, server, conn)

        yield proxy, open_pair


@pytest.mark.parametrize(("listen", "up"), [("tcp", "tcp"), ("unix", "tcp"), ("tcp", "unix")])
async def test_transparent_both_ways_with_half_close(listen: str, up: str, sockdir: Path) -> None:
    with anyio.fail_after(5):
        async with pairs(listen, up, sockdir=sockdir) as (proxy, open_pair):
            assert proxy.endpoint.startswith(f"{listen}://")
            p = await open_pair()
            await p.client.send(b"hello")
            assert await read(p.server, 5) == b"hello"
            big = os.urandom(1 << 20)
            async with anyio.create_task_group() as tg:
                tg.start_soon(p.server.send, big)
                assert await read(p.client, len(big)) == big
            # The client half-closes: the server sees EOF, and can still answer.
            await p.client.send_eof()
            with pytest.raises(anyio.EndOfStream):
                await p.server.receive()
            # Its last bytes, then its close, reach the client.
            async with anyio.create_task_group() as tg:

                async def send_and_close() -> None:
                    await p.server.send(big)
                    await p.server.aclose()

                tg.start_soon(send_and_close)
                assert await read(p.client, len(big)) == big
            with pytest.raises(anyio.EndOfStream):
                await p.client.receive()
            await p.conn.wait_closed()
            assert not p.conn.was_reset and proxy.connections == []
            assert (p.conn.to_server.forwarded, p.conn.to_client.forwarded) == (5, 2 * len(big))


async def test_delay_holds_each_chunk_without_adding_up(sockdir: Path) -> None:
    delay = 0.25
    with anyio.fail_after(5):
        async with pairs(sockdir=sockdir) as (proxy, open_pair):
            p = await open_pair()
            proxy.set_faults(Faults(delay=delay), "to_server")  # a live connection gets it too
            start = time.monotonic()
            for i, chunk in enumerate([b"a", b"b", b"c"]):
                await p.client.send(chunk)
                await p.conn.to_server.wait_received(i + 1)  # three chunks, not one
            assert await read(p.server, 3) == b"abc"  # in order
            elapsed = time.monotonic() - start
            assert delay <= elapsed < 2 * delay, elapsed  # each held `delay`, not one after another (3 * delay)
            start = time.monotonic()
            await p.server.send(b"x")  # the other direction is not delayed
            assert await read(p.client, 1) == b"x"
            assert time.monotonic() - start < delay


async def test_stall_holds_bytes_with_the_socket_open(sockdir: Path) -> None:
    with anyio.fail_after(5):
        async with pairs(sockdir=sockdir) as (proxy, open_pair):
            proxy.set_faults(Faults(stall=True), "to_client")  # for new connections
            p = await open_pair()
            await p.server.send(b"held")
            assert await p.conn.to_client.wait_received(4)
            assert p.conn.to_client.forwarded == 0
            await p.client.send(b"up")  # the other direction flows
            assert await read(p.server, 2) == b"up"
            proxy.clear_faults()
            assert await read(p.client, 4) == b"held"


async def test_drop_and_corrupt_at_offsets(sockdir: Path) -> None:
    with anyio.fail_after(5):
        async with pairs(sockdir=sockdir) as (proxy, open_pair):
            p = await open_pair()
            p.conn.set_faults(Faults(drop_after=4, corrupt_at=[1, 5]), "to_server")
            await p.client.send(b"abcdef")
            assert await read(p.server, 4) == b"a" + bytes([ord("b") ^ 0xFF]) + b"cd"
            await p.server.send(b"reply")  # the other direction is untouched
            assert await read(p.client, 5) == b"reply"
            await proxy.reset_all()
            assert p.conn.to_server.dropped == 2 and p.conn.to_server.forwarded == 4


async def test_corrupt_probability_repeats_per_connection(sockdir: Path) -> None:
    size, p_flip = 256, 0.3
    expected_rng = random.Random(0)  # each direction's own default
    expected = bytes(0xFF if expected_rng.random() < p_flip else 0 for _ in range(size))
    seeded = random.Random(7)
    seeded_expected = bytes(0xFF if seeded.random() < p_flip else 0 for _ in range(size))
    with anyio.fail_after(5):
        async with pairs(sockdir=sockdir, faults=Faults(corrupt_probability=p_flip)) as (proxy, open_pair):
            for _ in range(2):
                p = await open_pair()
                await p.client.send(bytes(size))
                assert await read(p.server, size) == expected
            p.conn.set_faults(Faults(corrupt_probability=p_flip, rng=random.Random(7)), "to_server")
            await p.client.send(bytes(size))
            assert await read(p.server, size) == seeded_expected


async def test_reset_sends_rst_both_ways(sockdir: Path) -> None:
    with anyio.fail_after(5):
        async with pairs(sockdir=sockdir) as (proxy, open_pair):
            p = await open_pair()
            p.conn.reset()
            await p.conn.wait_closed()
            for stream in (p.client, p.server):
                with pytest.raises(anyio.BrokenResourceError):  # ECONNRESET, not EOF
                    await stream.receive()
            assert p.conn.was_reset
            # reset_after: the connection is reset once that many bytes went through.
            proxy.set_faults(Faults(reset_after=3), "to_server")
            p = await open_pair()
            await p.client.send(b"abcdef")
            await p.conn.wait_closed()
            assert p.conn.was_reset and p.conn.to_server.forwarded == 3
            with pytest.raises(anyio.BrokenResourceError):
                await p.client.receive()


async def test_refuse_and_unreachable_upstream(sockdir: Path) -> None:
    with anyio.fail_after(5):
        async with pairs(sockdir=sockdir) as (proxy, open_pair):
            proxy.refuse = True
            async with await _connect(proxy.endpoint) as client:
                with pytest.raises(anyio.BrokenResourceError):
                    await client.receive()
            assert proxy.accepted == 1
            proxy.refuse = False
            p = await open_pair()  # the upstream sees this connection, and only this one
            await p.client.send(b"ok")
            assert await read(p.server, 2) == b"ok"
            proxy.upstream = f"unix://{sockdir}/nobody.sock"
            async with await _connect(proxy.endpoint) as client:
                with pytest.raises(anyio.BrokenResourceError):
                    await client.receive()


async def test_on_connect_scripts_connections_one_by_one(sockdir: Path) -> None:
    with anyio.fail_after(5):
        async with pairs(sockdir=sockdir) as (proxy, open_pair):

            def script(conn: ProxyConnection) -> None:
                if conn.number == 2:
                    conn.set_faults(Faults(corrupt_at=[0]), "to_client")

            proxy.on_connect = script
            first, second, third = [await open_pair() for _ in range(3)]
            for p, expected in [(first, b"x"), (second, bytes([ord("x") ^ 0xFF])), (third, b"x")]:
                await p.server.send(b"x")
                assert await read(p.client, 1) == expected
            assert [c.number for c in proxy.connections] == [1, 2, 3]


def test_faults_are_checked() -> None:
    for bad in [
        {"delay": -1},
        {"drop_after": -1},
        {"reset_after": -2},
        {"corrupt_probability": 2},
        {"corrupt_at": [-1]},
    ]:
        with pytest.raises(ValueError):
            Faults(**bad)
    with pytest.raises(ValueError):
        FaultProxy("http://example.com")
    assert Faults(corrupt_at=[3, 1]).corrupt_at == frozenset({1, 3})


# -- callrt through the proxy ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    w = WorkerProcess("tcp://127.0.0.1:0", COMPONENTS, backend="asyncio")
    w.start()
    yield w
    assert w.stop() == 0


@pytest.fixture
def marker(scratch: Path) -> str:
    return str(scratch / f"m{uuid.uuid4().hex[:12]}")


@asynccontextmanager
async def proxied(
    worker: WorkerProcess, *, on_connect: Callable[[ProxyConnection], object] | None = None, **options: Any
) -> AsyncIterator[tuple[FaultProxy, call.Connection]]:
    """A proxy in front of ``worker``, and a client connected to the worker through it."""
    async with FaultProxy(str(worker.endpoint)) as proxy:
        proxy.on_connect = on_connect
        resolver = call.ConstantResolver([proxy.endpoint])
        async with call.connect(resolver, options=call.ClientOptions(**options)) as conn:
            yield proxy, conn


def the_replica(conn: call.Connection) -> Any:
    (replica,) = conn.replicas.values()
    return replica


async def until(predicate: Callable[[], object], what: str, within: float = 5.0) -> None:
    """Poll ``predicate``: it reads a marker file another process writes, or the client's replica state."""
    with anyio.move_on_after(within):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def until_event(marker: str, event: str, within: float = 5.0) -> list[tuple[str, int, str]]:
    await until(lambda: any(e == event for e, _, _ in events(marker)), f"{event!r} in {marker}", within)
    return events(marker)


async def test_callrt_through_a_proxy_without_faults(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with proxied(worker) as (proxy, conn):
            lab, echo = conn.stub(Lab), conn.stub(Echo)
            assert await lab.add(2, 3) == 5
            payload = os.urandom(3 << 20)
            assert await echo.echo(payload) == payload
            results: dict[int, int] = {}

            async def one(i: int) -> None:
                results[i] = await lab.ident(i, 0.001 * (i % 5))

            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(one, i)
            assert results == {i: i for i in range(100)}
            assert proxy.accepted == 1 and conn.retry_counts["retries"] == 0
            (c,) = proxy.connections
            assert c.to_server.forwarded == c.to_server.received > len(payload)


async def test_reset_mid_call_retries_a_retriable_method(worker: WorkerProcess, marker: str) -> None:
    with anyio.fail_after(10):
        async with proxied(worker) as (proxy, conn):
            lab = conn.stub(Lab)
            result: list[int] = []

            async def run() -> None:
                result.append(await lab.once(marker, 30.0))  # only the first run blocks

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await until_event(marker, "start")  # the request reached the handler
                await proxy.reset_all()
            assert result == [worker.pid]
            assert [e for e, _, _ in events(marker)][:3] == ["start", "start", "done"]
            assert proxy.accepted == 2 and conn.retry_counts["retries"] == 1


async def test_reset_mid_call_fails_a_not_retriable_method(worker: WorkerProcess, marker: str) -> None:
    with anyio.fail_after(10):
        async with proxied(worker) as (proxy, conn):
            lab = conn.stub(Lab)
            failed: list[BaseException] = []

            async def run() -> None:
                try:
                    await lab.once_unsafe(marker, 30.0)
                except errors.CommunicationError as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await until_event(marker, "start")
                await proxy.reset_all()
            assert len(failed) == 1 and not isinstance(failed[0], errors.RemoteError)
            assert [e for e, _, _ in events(marker)] == ["start"]  # not run again
            assert await lab.add(1, 1) == 2  # a new connection serves new calls
            assert proxy.accepted == 2 and conn.retry_counts["retries"] == 0


async def test_keepalive_finds_a_stalled_connection_dead(worker: WorkerProcess) -> None:
    interval, timeout = 0.2, 0.2
    with anyio.fail_after(10):
        async with proxied(worker, keepalive_interval=interval, keepalive_timeout=timeout) as (proxy, conn):
            lab = conn.stub(Lab)
            assert await lab.add(1, 1) == 2
            replica = the_replica(conn)
            stalled_at = time.monotonic()
            proxy.set_faults(Faults(stall=True))  # both ways, this connection and the next ones
            queued: list[int] = []
            failed: list[BaseException] = []

            async def retriable() -> None:
                queued.append(await lab.ident(7, 0.0))

            async def not_retried() -> None:
                try:
                    await lab.ident.options(call.CallOptions(retry=False))(8, 0.0)
                except errors.CommunicationError as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(retriable)
                tg.start_soon(not_retried)
                await until(lambda: replica.state is not call.ReplicaState.AVAILABLE, "the replica found dead")
                dead_after = time.monotonic() - stalled_at
                assert interval <= dead_after < interval + timeout + 0.5, dead_after
                # Its calls failed with a communication error; the retriable one is retried and
                # waits for a replica (the reconnection is stalled too), the other one surfaces.
                await until(lambda: failed, "the not-retriable call to fail")
                assert queued == []
                proxy.clear_faults()  # the stalled reconnection completes
            assert queued == [7]
            assert replica.state is call.ReplicaState.AVAILABLE and proxy.accepted >= 2


async def test_client_deadline_holds_when_replies_are_late(worker: WorkerProcess, scratch: Path) -> None:
    done_marker, cancelled_marker = (str(scratch / f"m{uuid.uuid4().hex[:12]}") for _ in range(2))
    deadline = 0.3
    with anyio.fail_after(10):
        async with proxied(worker) as (proxy, conn):
            lab = conn.stub(Lab)
            await lab.pid()  # connected: the timings below are the calls' alone
            proxy.set_faults(Faults(delay=1.0), "to_client")
            # The handler finishes in time; its reply would not: the caller's deadline is enforced locally.
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(deadline):
                    await lab.nap(0.05, done_marker)
            assert deadline - 0.01 <= time.monotonic() - start < deadline + 0.5  # not the 1 s the reply takes
            assert [e for e, _, _ in await until_event(done_marker, "done")] == ["start", "done"]
            # The handler is still running at the deadline, which travelled: the server cancels it.
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(deadline):
                    await lab.nap(5.0, cancelled_marker)
            assert deadline - 0.01 <= time.monotonic() - start < deadline + 0.5
            found = await until_event(cancelled_marker, "cancelled", within=3)
            assert [e for e, _, _ in found] == ["start", "cancelled"]
            assert 0 < float(found[0][2]) <= deadline + 0.001
            # The late replies of both calls arrive now; the client drops them and goes on.
            proxy.clear_faults()
            assert await lab.add(1, 1) == 2
            assert proxy.accepted == 1 and conn.retry_counts["retries"] == 0


async def test_drain_serves_a_request_that_crosses_the_goaway(marker: str) -> None:
    victim = WorkerProcess("tcp://127.0.0.1:0", COMPONENTS, backend="trio")
    await anyio.to_thread.run_sync(victim.start)
    try:
        with anyio.fail_after(10):
            async with proxied(victim) as (proxy, conn):
                lab = conn.stub(Lab)
                assert await lab.pid() == victim.pid
                (c,) = proxy.connections
                proxy.set_faults(Faults(delay=0.3), "to_client")  # the goaway and replies take 0.3 s
                results: dict[str, int] = {}
                exit_code: list[int] = []

                async def in_flight() -> None:
                    results["in flight"] = await lab.nap(0.5, marker)

                async def stop() -> None:
                    exit_code.append(await anyio.to_thread.run_sync(victim.stop))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(in_flight)
                    await until_event(marker, "start")
                    seen = c.to_client.received
                    tg.start_soon(stop)  # SIGTERM: the server sends goaway and drains
                    assert await c.to_client.wait_received(seen + 1)  # the goaway, on its way
                    await anyio.wait_all_tasks_blocked()  # had the client any way to hear of it, it has
                    assert the_replica(conn).state is call.ReplicaState.AVAILABLE
                    # This request leaves after the goaway did: the server must still serve it.
                    fail_fast = call.CallOptions(fail_fast=True)
                    results["crossing"] = await lab.ident.options(fail_fast)(5, 0.0)
                assert results == {"in flight": victim.pid, "crossing": 5}
                assert exit_code == [0]
                assert [e for e, _, _ in events(marker)] == ["start", "done"]
                await c.wait_closed()  # both calls went over the first connection, which then closed cleanly
                assert not c.was_reset
    finally:
        victim.kill()


@pytest.mark.parametrize("direction", ["to_server", "to_client"])
async def test_corrupt_frame_closes_the_connection_and_the_call_is_retried(
    worker: WorkerProcess, direction: str
) -> None:
    def corrupt_first(c: ProxyConnection) -> None:
        # The first connection's first frame after the hello gets an unknown kind.
        if c.number == 1:
            c.set_faults(Faults(corrupt_at=[FIRST_FRAME[direction] + KIND]), direction)  # type: ignore[arg-type]

    with anyio.fail_after(10):
        async with proxied(worker, on_connect=corrupt_first) as (proxy, conn):
            assert await conn.stub(Lab).add(2, 3) == 5
            assert proxy.accepted == 2 and conn.retry_counts["retries"] == 1
            assert [c.number for c in proxy.connections] == [2]


async def test_keepalive_drops_a_connection_whose_replies_no_longer_parse(worker: WorkerProcess) -> None:
    def grow_first_reply(c: ProxyConnection) -> None:
        # The first reply's length grows by 16 MiB in transit, under the 64 MiB limit: the
        # client's decoder waits for a body that never comes, and the server answers its pings.
        if c.number == 1:
            c.set_faults(Faults(corrupt_at=[FIRST_FRAME["to_client"] + 2]), "to_client")

    options = {"keepalive_interval": 0.2, "keepalive_timeout": 0.2}
    with anyio.fail_after(1.5):
        async with proxied(worker, on_connect=grow_first_reply, **options) as (proxy, conn):
            assert await conn.stub(Lab).add(2, 3) == 5  # retried on a second connection
            assert proxy.accepted == 2
