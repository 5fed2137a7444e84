"""The server under attack from one ordinary client: a well-behaved client is still served.

Each attack runs on raw connections to a real worker process (one on the
asyncio Protocol shell, one on trio's stream shell) while a well-behaved
client on its own connection calls the server in a loop. For every attack:

- the well-behaved client keeps getting correct answers, with p99 latency
  under :data:`P99_BOUND`;
- the worker's RSS stays under its resting size plus :data:`RSS_GROWTH_BOUND`;
- afterwards the worker is alive, serving, and back to its resting number of
  open file descriptors.

The CI version is short; ``-m soak`` runs every attack ten times harder
(``bench/README.md`` records its figures).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import msgspec
import pytest
from anyio.abc import SocketStream

from callrt import call
from callrt.call import make_method_key
from callrt.protocol import (
    HELLO_SIZE,
    Cancel,
    Hello,
    Request,
    TraceContext,
    encode_frame,
    encode_hello,
    encode_request_header,
)
from callrt.testing import WorkerProcess
from tests.components import Echo, Lab
from tests.support import rss_kib

pytestmark = pytest.mark.anyio

P99_BOUND = 0.05  # seconds: the protected client's p99 while an attack runs
RSS_GROWTH_BOUND = 64 << 10  # KiB over the worker's resting RSS
MAX_FRAME = 1 << 20
HEADER = struct.Struct("<IBQ")
HELLO = encode_hello(Hello(1, 1, MAX_FRAME))
ECHO = make_method_key("tests.Echo", "echo")
IDENT = make_method_key("tests.Lab", "ident")
SERVER_OPTIONS = {
    "max_frame_size": MAX_FRAME,
    "max_connections": 64,
    "handshake_timeout": 1.0,
    "idle_timeout": 1.0,
    "body_timeout": 1.0,
}


@pytest.fixture(params=[pytest.param(("asyncio", {"use_uvloop": True}), id="client=asyncio")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]  # the attacks are on the server; one client backend


@pytest.fixture(scope="module", params=["asyncio", "trio"], ids=["server=asyncio", "server=trio"])
def worker(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    w = WorkerProcess(
        "tcp://127.0.0.1:0",
        ["tests.components:Echo", "tests.components:Lab"],
        backend=request.param,
        options=SERVER_OPTIONS,
    )
    w.start()
    yield w
    assert w.proc is not None and w.proc.poll() is None, "the server died"
    assert w.stop() == 0


# -- measuring the worker ----------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Protected:
    """A well-behaved client calling in a loop; its latencies while an attack runs."""

    latencies: list[float]
    failures: list[BaseException]

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99)] if ordered else float("inf")


@asynccontextmanager
async def protected_client(worker: WorkerProcess) -> AsyncIterator[Protected]:
    result = Protected([], [])
    async with call.connect(str(worker.endpoint)) as client, anyio.create_task_group() as tg:
        echo = client.stub(Echo)
        assert await echo.echo(b"warm") == b"warm"

        async def loop() -> None:
            n = 0
            while True:
                n += 1
                payload = n.to_bytes(4, "little")
                start = time.perf_counter()
                try:
                    with anyio.fail_after(5):
                        answer = await echo.echo(payload)
                    assert answer == payload
                except Exception as exc:  # counted, and reported by the test
                    result.failures.append(exc)
                result.latencies.append(time.perf_counter() - start)
                await anyio.sleep(0.002)  # a steady trickle of calls, not a flood of our own

        tg.start_soon(loop)
        yield result
        tg.cancel_scope.cancel()


async def raw(worker: WorkerProcess, hello: bool = True) -> SocketStream:
    ep = worker.endpoint
    assert ep is not None
    stream = await anyio.connect_tcp(ep.host, ep.port)
    if hello:
        await stream.send(HELLO)
    return stream


async def until_closed(stream: SocketStream, within: float) -> bool:
    """Read and drop what the server sends; whether it closed the connection within ``within`` seconds."""
    with anyio.move_on_after(within):
        while True:
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True
    return False


async def send_for(stream: SocketStream, data: bytes, seconds: float) -> int:
    """Send ``data`` again and again for ``seconds`` (the server may stop reading); how many times it went."""
    sent = 0
    with anyio.move_on_after(seconds):
        while True:
            try:
                await stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                break
            sent += 1
    return sent


def request(request_id: int, key: bytes, args: tuple[object, ...]) -> bytes:
    return encode_frame(Request(request_id, key, msgspec.msgpack.encode(args)))


# -- the attacks -------------------------------------------------------------------
# Each takes the worker and a scale, and returns once its harm is done (connections may stay open
# until the attack returns; the suite then checks the server recovered).


async def duplicate_ids(worker: WorkerProcess, n: int) -> None:
    for _ in range(5 * n):
        stream = await raw(worker)
        async with stream:
            await stream.send(request(5, IDENT, (1, 1.0)) + request(5, IDENT, (2, 1.0)))
            assert await until_closed(stream, 5), "a reused request id did not end the connection"


async def huge_body_headers(worker: WorkerProcess, n: int) -> None:
    """Connections announcing maximum-size bodies and sending a few bytes of them."""
    async with contextlib.AsyncExitStack() as stack:
        for i in range(20 * n):
            stream = await stack.enter_async_context(await raw(worker))
            await stream.send(HEADER.pack(MAX_FRAME, 1, i + 1) + ECHO + b"\0" * 100)
        await anyio.sleep(0.5)  # they sit there, half-sent


async def unread_replies(worker: WorkerProcess, n: int) -> None:
    """Echo calls with 1 KiB arguments, sent as fast as the server takes them, replies never read."""
    batch = b"".join(request(i + 1, ECHO, (b"r" * 1024,)) for i in range(256))
    stream = await raw(worker)
    async with stream:
        await send_for(stream, batch, 1.0 * n)


async def parked_calls(worker: WorkerProcess, n: int) -> None:
    """Async calls that sleep a minute, as many as the server will take, on one connection."""
    stream = await raw(worker)
    async with stream:
        ids = iter(range(1, 1 << 40))
        batch_of = lambda: b"".join(request(next(ids), IDENT, (1, 60.0)) for _ in range(1000))  # noqa: E731
        with anyio.move_on_after(1.0 * n):
            while True:
                await stream.send(batch_of())


async def bad_argument_flood(worker: WorkerProcess, n: int) -> None:
    batch = b"".join(request(i + 1, ECHO, ("not bytes", 1, 2)) for i in range(512))
    stream = await raw(worker)
    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(until_closed, stream, 1.0 * n)  # read the errors, so the server keeps reading
        await send_for(stream, batch, 1.0 * n)
        tg.cancel_scope.cancel()


async def valid_echo_flood(worker: WorkerProcess, n: int) -> None:
    batch = b"".join(request(i + 1, ECHO, (b"x",)) for i in range(512))
    stream = await raw(worker)
    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(until_closed, stream, 1.0 * n)
        await send_for(stream, batch, 1.0 * n)
        tg.cancel_scope.cancel()


async def cancel_flood(worker: WorkerProcess, n: int) -> None:
    batch = b"".join(encode_frame(Cancel(i + 1)) for i in range(1024))
    stream = await raw(worker)
    async with stream:
        await send_for(stream, batch, 1.0 * n)


async def metadata_bomb(worker: WorkerProcess, n: int) -> None:
    """Requests announcing 65,535 metadata entries: refused before parsing, each closing its connection."""
    header = bytearray(encode_request_header(1, ECHO, 0, metadata=(("k", "v"),)))
    body = header[13:]
    body[17:19] = struct.pack("<H", 0xFFFF)
    frame = HEADER.pack(len(body) + 4 * 0xFFFF, 1, 1) + bytes(body) + b"\x01\x00\x00k\x01\x00v" * 0xFFFF
    for _ in range(10 * n):
        stream = await raw(worker)
        async with stream:
            await stream.send(frame[:65536])
            assert await until_closed(stream, 5)


async def tracestate_flood(worker: WorkerProcess, n: int) -> None:
    """Requests whose tracestate would forge log lines; dropped silently (the worker's stderr is checked)."""
    trace = TraceContext(b"\x01" * 16, b"\x02" * 8, 1, "a=b\nFORGED LOG LINE," * 20)
    frame = encode_request_header(1, ECHO, 5, trace=trace) + msgspec.msgpack.encode((b"x",))
    batch = b"".join(frame for _ in range(256))
    stream = await raw(worker)
    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(until_closed, stream, 1.0 * n)
        await send_for(stream, batch, 1.0 * n)
        tg.cancel_scope.cancel()


async def connection_flood(worker: WorkerProcess, n: int) -> None:
    """More handshaken connections than max_connections: the excess is refused, nothing breaks."""
    async with contextlib.AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(await raw(worker)) for _ in range(100 * n)]
        decoder_replies = []
        for stream in streams:
            data = b""
            with anyio.move_on_after(2):
                while len(data) < HELLO_SIZE:
                    data += await stream.receive()
            decoder_replies.append(data[:HELLO_SIZE])
        refused = sum(1 for d in decoder_replies if len(d) == HELLO_SIZE and d[6] == 1)
        assert refused >= len(streams) - SERVER_OPTIONS["max_connections"], refused


async def idle_and_slow_connections(worker: WorkerProcess, n: int) -> None:
    """Silent before the hello, silent after it, and a body trickled a byte at a time: all closed in time."""
    silent = await raw(worker, hello=False)
    idle = await raw(worker)
    trickle = await raw(worker)
    async with silent, idle, trickle, anyio.create_task_group() as tg:
        closed: dict[str, bool] = {}

        async def watch(name: str, stream: SocketStream) -> None:
            closed[name] = await until_closed(stream, 6)

        async def drip() -> None:
            await trickle.send(HEADER.pack(1000, 1, 1))
            with anyio.move_on_after(6):
                while True:
                    await anyio.sleep(0.1)
                    try:
                        await trickle.send(b"\0")
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return

        for name, stream in (("silent", silent), ("idle", idle), ("trickle", trickle)):
            tg.start_soon(watch, name, stream)
        tg.start_soon(drip)
    assert closed == {"silent": True, "idle": True, "trickle": True}, closed


ATTACKS: list[Callable[[WorkerProcess, int], Awaitable[None]]] = [
    duplicate_ids,
    huge_body_headers,
    unread_replies,
    parked_calls,
    bad_argument_flood,
    valid_echo_flood,
    cancel_flood,
    metadata_bomb,
    tracestate_flood,
    connection_flood,
    idle_and_slow_connections,
]


async def _attack_main(name: str, endpoint: str, n: int) -> None:
    class Target:  # what the attacks need of a WorkerProcess
        def __init__(self) -> None:
            from callrt.endpoints import parse_endpoint

            self.endpoint = parse_endpoint(endpoint)

    attack = {a.__name__: a for a in ATTACKS}[name]
    await attack(Target(), n)  # type: ignore[arg-type]


async def run_attack(attack: Callable[[WorkerProcess, int], Awaitable[None]], worker: WorkerProcess, n: int) -> None:
    """Run ``attack`` from a process of its own: its CPU is not the protected client's (as with a real attacker)."""
    code = f"import anyio, tests.test_attacks as t; anyio.run(t._attack_main, {attack.__name__!r}, {str(worker.endpoint)!r}, {n})"
    result = await anyio.run_process([sys.executable, "-c", code], check=False)
    assert result.returncode == 0, result.stderr.decode()[-3000:]


def _report(worker: WorkerProcess, attack: str, scale: int, protected: Protected, rss_growth_kib: int) -> None:
    """With CALLRT_ATTACK_REPORT=<file>, each attack's figures are appended to it, one JSON line each."""
    path = os.environ.get("CALLRT_ATTACK_REPORT")
    if path:
        ordered = sorted(protected.latencies)
        line = {
            "server": worker.backend,
            "attack": attack,
            "scale": scale,
            "calls": len(ordered),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
            "p99_ms": round(protected.p99() * 1000, 2),
            "rss_growth_kib": rss_growth_kib,
        }
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


@pytest.mark.parametrize(
    "scale", [pytest.param(1, id="ci"), pytest.param(10, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(900)])]
)
@pytest.mark.parametrize("attack", ATTACKS, ids=[a.__name__ for a in ATTACKS])
async def test_the_server_withstands(
    worker: WorkerProcess, attack: Callable[[WorkerProcess, int], Awaitable[None]], scale: int
) -> None:
    assert worker.proc is not None
    pid = worker.proc.pid
    with anyio.fail_after(60 * scale):
        async with call.connect(str(worker.endpoint)) as client:
            assert await client.stub(Echo).echo(b"rest") == b"rest"
            fds_at_rest, rss_at_rest = open_fds(pid), rss_kib(pid)
        peak = rss_at_rest
        async with protected_client(worker) as protected, anyio.create_task_group() as tg:

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, rss_kib(pid))
                    await anyio.sleep(0.05)

            tg.start_soon(sample)
            started = time.monotonic()
            while True:  # a quick attack is repeated, so the protected client runs through a second of it
                await run_attack(attack, worker, scale)
                if time.monotonic() - started >= 1.0:
                    break
            tg.cancel_scope.cancel()

        _report(worker, attack.__name__, scale, protected, peak - rss_at_rest)
        assert not protected.failures, protected.failures[:3]
        assert len(protected.latencies) >= 20, "the protected client barely ran"
        assert protected.p99() < P99_BOUND, f"p99 {protected.p99() * 1000:.1f} ms over {len(protected.latencies)} calls"
        assert peak - rss_at_rest < RSS_GROWTH_BOUND, f"RSS grew {peak - rss_at_rest} KiB"

        # Alive and serving afterwards, with its descriptors back to where they were.
        async with call.connect(str(worker.endpoint)) as client:
            assert await client.stub(Lab).ident(3, 0) == 3
            with anyio.fail_after(10):
                while open_fds(pid) > fds_at_rest + 1:  # noqa: ASYNC110  # the client of this check holds one
                    await anyio.sleep(0.05)
    assert worker.proc.poll() is None


async def test_a_thousand_quick_connects_all_get_in(worker: WorkerProcess) -> None:
    """The listen backlog (ServerOptions.backlog, 1,024) takes a burst: with the old default of 100,
    14 of 1,000 connects overflowed it and waited a second for the kernel to retry them."""
    slow: list[float] = []

    async def connect_once() -> None:
        start = time.perf_counter()
        stream = await raw(worker, hello=False)
        async with stream:
            elapsed = time.perf_counter() - start
            if elapsed > 0.9:  # a connect the backlog dropped is retried by the kernel after 1 s
                slow.append(elapsed)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(connect_once)
    assert not slow, f"{len(slow)} of 1,000 connects took over 0.9 s (the backlog overflowed)"
