"""Malformed peers: raw sockets sending bad bytes to a real server in a worker process.

For every kind of bad input the server must close *that* connection (the raw
socket reads end-of-stream within a bounded time), while a normal callrt client
on another connection keeps getting answers during and after, and the server
process lives on. Raw frames are built with ``callrt.protocol``'s encoders; only
the deliberately broken parts are packed by hand.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from anyio.abc import SocketStream

from callrt import call
from callrt.call import ClientOptions, make_method_key
from callrt.protocol import (
    HEADER_SIZE,
    HELLO_SIZE,
    MAGIC,
    FrameDecoder,
    GoAway,
    Hello,
    HelloReply,
    Ping,
    Request,
    Response,
    decode_hello_reply,
    encode_frame,
    encode_hello,
    encode_request_header,
)
from callrt.testing import WorkerProcess
from tests.components import Echo

pytestmark = pytest.mark.anyio

MAX_FRAME = 1 << 20
HANDSHAKE_TIMEOUT = 0.5
HEADER = struct.Struct("<IBQ")  # body length, kind, id: the frame header of docs/protocol.md
HELLO = encode_hello(Hello(1, 1, MAX_FRAME))
ECHO_KEY = make_method_key("tests.Echo", "echo")


def echo_request(request_id: int, data: bytes) -> bytes:
    return encode_frame(Request(request_id, ECHO_KEY, msgspec.msgpack.encode((data,))))


@pytest.fixture(
    scope="module",
    params=[("asyncio", "tcp"), ("trio", "tcp"), ("trio", "unix")],
    ids=["server=asyncio-tcp", "server=trio-tcp", "server=trio-unix"],
)
def worker(request: pytest.FixtureRequest, scratch: Path) -> Iterator[WorkerProcess]:
    backend, transport = request.param
    address = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{scratch}/{backend}.sock"
    options = {"handshake_timeout": HANDSHAKE_TIMEOUT, "max_frame_size": MAX_FRAME}
    w = WorkerProcess(address, ["tests.components:Echo"], backend=backend, options=options)
    w.start()
    yield w
    assert w.proc is not None and w.proc.poll() is None, "the server died"
    assert w.stop() == 0


async def raw_connect(worker: WorkerProcess) -> SocketStream:
    ep = worker.endpoint
    assert ep is not None
    if ep.scheme == "tcp":
        return await anyio.connect_tcp(ep.host, ep.port)
    return await anyio.connect_unix(ep.address)


async def read_until_closed(stream: SocketStream, within: float = 3.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = bytearray()
    with anyio.fail_after(within):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return bytes(data)


def assert_hello_reply(data: bytes, version: int = 1) -> None:
    assert len(data) >= HELLO_SIZE, data
    reply = decode_hello_reply(data[:HELLO_SIZE])
    assert (reply.version, reply.max_frame_size) == (version, MAX_FRAME)


# -- the bad inputs ----------------------------------------------------------------

# Each returns (bytes to send, whether the server sends a hello reply before closing).


def random_bytes() -> tuple[bytes, bool]:
    data = bytearray(os.urandom(512))
    data[0] = ord("X")  # never the start of the magic
    return bytes(data), False


def wrong_magic() -> tuple[bytes, bool]:
    return b"CLRX" + HELLO[4:], False


def bad_hello_fields() -> tuple[bytes, bool]:
    return MAGIC + struct.pack("<HHI", 3, 1, MAX_FRAME), False  # min version above max version


def body_over_maximum() -> tuple[bytes, bool]:
    # Only the header: the server must refuse from the announced length, before any body.
    return HELLO + HEADER.pack(MAX_FRAME + 1, 1, 1), True


def body_at_u32_maximum() -> tuple[bytes, bool]:
    return HELLO + HEADER.pack(0xFFFFFFFF, 2, 1), True


def unknown_frame_kind() -> tuple[bytes, bool]:
    return HELLO + HEADER.pack(4, 0xEE, 1) + b"\0\0\0\0", True


def unknown_request_flags() -> tuple[bytes, bool]:
    frame = bytearray(echo_request(1, b"hi"))
    frame[HEADER_SIZE + 16] = 0x80  # the flags byte after the 16-byte method key
    return HELLO + bytes(frame), True


def request_header_overruns_frame() -> tuple[bytes, bool]:
    # Flags announce metadata whose length points past the end of the frame.
    header = encode_request_header(1, ECHO_KEY, 0, metadata=(("k", "v"),))
    body = bytearray(header[HEADER_SIZE:])
    body[17:19] = struct.pack("<H", 1)  # one entry...
    body[19:21] = struct.pack("<H", 0xFFFF)  # ...whose key is 65535 bytes long
    return HELLO + HEADER.pack(len(body), 1, 1) + bytes(body), True


def request_header_truncated() -> tuple[bytes, bool]:
    return HELLO + HEADER.pack(5, 1, 1) + ECHO_KEY[:5], True


def metadata_not_utf8() -> tuple[bytes, bool]:
    header = encode_request_header(1, ECHO_KEY, 0, metadata=(("k", "v"),))
    body = bytearray(header[HEADER_SIZE:])
    body[-1:] = b"\xff"  # the value "v" becomes an invalid UTF-8 byte
    return HELLO + HEADER.pack(len(body), 1, 1) + bytes(body), True


def ping_with_body() -> tuple[bytes, bool]:
    frame = encode_frame(Ping(7))
    return HELLO + HEADER.pack(3, 5, 7) + b"abc" + frame, True


def goaway_from_client() -> tuple[bytes, bool]:
    return HELLO + encode_frame(GoAway("I am not a server")), True


def response_from_client() -> tuple[bytes, bool]:
    return HELLO + encode_frame(Response(1, b"\xc0")), True


def garbage_after_hello() -> tuple[bytes, bool]:
    return HELLO + b"\xff" * 64, True


BAD_INPUTS: list[Callable[[], tuple[bytes, bool]]] = [
    random_bytes,
    wrong_magic,
    bad_hello_fields,
    body_over_maximum,
    body_at_u32_maximum,
    unknown_frame_kind,
    unknown_request_flags,
    request_header_overruns_frame,
    request_header_truncated,
    metadata_not_utf8,
    ping_with_body,
    goaway_from_client,
    response_from_client,
    garbage_after_hello,
]


# -- tests -----------------------------------------------------------------------------


async def test_raw_frames_are_valid(worker: WorkerProcess) -> None:
    """The raw builder is right: a well-formed hello and request get a hello reply and an answer."""
    with anyio.fail_after(5):
        stream = await raw_connect(worker)
        async with stream:
            await stream.send(HELLO + echo_request(41, b"raw") + echo_request(42, b"frames"))
            decoder = FrameDecoder(MAX_FRAME, expect="hello_reply")
            frames: list[object] = []
            while len(frames) < 3:
                decoder.receive_data(await stream.receive())
                while (frame := decoder.next_frame()) is not None:
                    frames.append(frame)
            assert frames[0] == HelloReply(1, MAX_FRAME)
            assert frames[1:] == [
                Response(41, msgspec.msgpack.encode(b"raw")),
                Response(42, msgspec.msgpack.encode(b"frames")),
            ]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[f.__name__ for f in BAD_INPUTS])
async def test_bad_input_closes_only_that_connection(
    worker: WorkerProcess, bad: Callable[[], tuple[bytes, bool]]
) -> None:
    data, replies = bad()
    with anyio.fail_after(10):
        async with call.connect(call.ConstantResolver([str(worker.endpoint)])) as conn:
            echo = conn.stub(Echo)
            assert await echo.echo(b"before") == b"before"
            (replica,) = conn.replicas.values()
            session = replica.session

            stream = await raw_connect(worker)
            async with stream:
                await stream.send(data)
                assert await echo.echo(b"during") == b"during"
                received = await read_until_closed(stream)
            if replies:
                assert_hello_reply(received)
                assert len(received) == HELLO_SIZE, "the server answered a frame it should have refused"
            else:
                assert received == b""

            assert await echo.echo(b"after") == b"after"
            assert replica.session is session, "the healthy connection was dropped"
    assert worker.proc is not None and worker.proc.poll() is None


async def test_truncated_frame_then_close(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(call.ConstantResolver([str(worker.endpoint)])) as conn:
            echo = conn.stub(Echo)
            frame = echo_request(1, b"x" * 1000)
            stream = await raw_connect(worker)
            async with stream:
                await stream.send(HELLO + frame[: len(frame) // 2])
                assert await echo.echo(b"during") == b"during"
                await stream.send_eof()
                received = await read_until_closed(stream)
            assert_hello_reply(received)
            assert len(received) == HELLO_SIZE  # no reply to half a request
            assert await echo.echo(b"after") == b"after"
    assert worker.proc is not None and worker.proc.poll() is None


async def test_hello_without_common_version_gets_version_zero(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        stream = await raw_connect(worker)
        async with stream:
            await stream.send(encode_hello(Hello(7, 9, MAX_FRAME)))
            received = await read_until_closed(stream)
        assert len(received) == HELLO_SIZE
        assert_hello_reply(received, version=0)
        async with call.connect(call.ConstantResolver([str(worker.endpoint)])) as conn:
            assert await conn.stub(Echo).echo(b"after") == b"after"


async def test_silent_clients_are_closed_after_handshake_timeout(worker: WorkerProcess) -> None:
    """One raw client sends nothing, one half a hello: both are closed once the handshake
    timeout passes. A client that completed its handshake earlier is not, though quiet."""
    options = ClientOptions(keepalive_interval=0)  # no pings from the healthy client
    closed: dict[bytes, tuple[bytes, float]] = {}

    async def silent(sent: bytes) -> None:
        stream = await raw_connect(worker)
        async with stream:
            start = time.monotonic()
            if sent:
                await stream.send(sent)
            received = await read_until_closed(stream, within=HANDSHAKE_TIMEOUT + 3)
            closed[sent] = (received, time.monotonic() - start)

    with anyio.fail_after(10):
        async with call.connect(call.ConstantResolver([str(worker.endpoint)]), options=options) as conn:
            echo = conn.stub(Echo)
            assert await echo.echo(b"before") == b"before"
            (replica,) = conn.replicas.values()
            session = replica.session
            async with anyio.create_task_group() as tg:
                tg.start_soon(silent, b"")
                tg.start_soon(silent, b"CLRT\x01")
                assert await echo.echo(b"during") == b"during"
            for received, elapsed in closed.values():
                assert received == b""
                assert HANDSHAKE_TIMEOUT - 0.1 <= elapsed < HANDSHAKE_TIMEOUT + 2
            assert len(closed) == 2
            # Older than the handshake timeout now, and still the same connection.
            assert await echo.echo(b"after") == b"after"
            assert replica.session is session
