"""Compression (protocol version 3): negotiated, flagged per frame, per client and per call, and bounded.

The bytes on the wire are counted by a FaultProxy between a real client and a real worker, so
"compressed" means fewer bytes travelled, not a flag set somewhere.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator

import anyio
import msgspec
import pytest

from callrt import call
from callrt.call import make_method_key
from callrt.compression import CODECS, CompressionError, codecs_named, compress, decompress
from callrt.context import CallOptions
from callrt.options import ClientOptions, ServerOptions
from callrt.protocol import (
    HELLO_SIZE,
    Error,
    FrameDecoder,
    Hello,
    HelloReply,
    Request,
    Response,
    Settings,
    decode_hello,
    encode_frame,
    encode_hello,
    encode_hello_reply,
)
from callrt.testing import FaultProxy, WorkerProcess
from tests.components import Echo
from tests.stream_components import Streams

pytestmark = pytest.mark.anyio

TEXT = b"".join(b'{"id": %d, "name": "item %d", "tags": ["a", "b"], "price": 12.5},' % (i, i) for i in range(20_000))
ECHO_KEY = make_method_key("tests.Echo", "echo")


@pytest.fixture(
    scope="module",
    params=[("asyncio", "protocol"), ("trio", "stream")],
    ids=["server=asyncio", "server=trio"],
)
def worker(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    backend, transport = request.param
    components = ["tests.components:Echo", "tests.stream_components:Streams"]
    w = WorkerProcess("tcp://127.0.0.1:0", components, backend=backend, options={"transport": transport})
    w.start()
    yield w
    assert w.proc is not None and w.proc.poll() is None, "the server died"
    assert w.stop() == 0


async def echo_through_proxy(
    worker: WorkerProcess, payload: bytes, client: ClientOptions, call_options: CallOptions | None = None
) -> tuple[int, int]:
    """Echo ``payload`` through a proxy: the bytes that went to the server and back."""
    assert worker.endpoint is not None
    async with FaultProxy(str(worker.endpoint)) as proxy:
        async with call.connect(proxy.endpoint, options=client) as conn:
            echo = conn.stub(Echo)
            if call_options is not None:
                echo = call.with_options(echo, call_options)
            assert await echo.echo(payload) == payload
        (connection,) = proxy.connections
        return connection.to_server.position, connection.to_client.position


@pytest.mark.parametrize("codec", sorted(CODECS))
async def test_a_negotiated_codec_compresses_both_ways(worker: WorkerProcess, codec: str) -> None:
    with anyio.fail_after(15):
        sent, received = await echo_through_proxy(worker, TEXT, ClientOptions(compression=codec))
    assert sent < len(TEXT) // 3 and received < len(TEXT) // 3, (codec, sent, received, len(TEXT))


async def test_compression_is_chosen_per_call(worker: WorkerProcess) -> None:
    with anyio.fail_after(15):
        off, _ = await echo_through_proxy(
            worker, TEXT, ClientOptions(compression="zlib"), CallOptions(compression="none")
        )
        on, back = await echo_through_proxy(worker, TEXT, ClientOptions(), CallOptions(compression="zlib"))
    assert off > len(TEXT)
    assert on < len(TEXT) // 3 and back < len(TEXT) // 3


async def test_random_bytes_and_small_payloads_go_as_they_are(worker: WorkerProcess) -> None:
    noise = os.urandom(1 << 20)
    with anyio.fail_after(15):
        sent, received = await echo_through_proxy(worker, noise, ClientOptions(compression="zlib"))
        small, _ = await echo_through_proxy(worker, b"x" * 500, ClientOptions(compression="zlib"))
    assert sent > len(noise) and received > len(noise)  # compressing would not shrink them
    assert small > 500  # under compression_threshold (1 KiB)


async def test_stream_items_are_compressed_too(worker: WorkerProcess) -> None:
    assert worker.endpoint is not None
    items = [TEXT[:4096]] * 50
    with anyio.fail_after(15):
        async with FaultProxy(str(worker.endpoint)) as proxy:
            async with call.connect(proxy.endpoint, options=ClientOptions(compression="zlib")) as conn:
                echoed = [w async for w in conn.stub(Streams).echo([t.decode() for t in items], suffix="")]
            (connection,) = proxy.connections
    assert echoed == [t.decode() for t in items]
    total = sum(map(len, items))
    assert connection.to_server.position < total // 3 and connection.to_client.position < total // 3


async def test_a_server_that_offers_no_codec_gets_plain_requests() -> None:
    worker = WorkerProcess("tcp://127.0.0.1:0", ["tests.components:Echo"], options={"compression": []})
    with worker, anyio.fail_after(15):
        sent, received = await echo_through_proxy(worker, TEXT, ClientOptions(compression="zlib"))
    assert sent > len(TEXT) and received > len(TEXT)


async def test_an_old_server_gets_plain_requests() -> None:
    """A version 2 server has no SETTINGS and no accept field: the client compresses nothing."""
    seen: list[Request] = []

    async def old_server(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            decode_hello(await stream.receive(HELLO_SIZE))
            await stream.send(encode_hello_reply(HelloReply(2, 64 << 20)))
            decoder = FrameDecoder(64 << 20, expect=None, version=2)  # a v3 field would be a protocol error
            while True:
                try:
                    decoder.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                for frame in decoder.frames():
                    assert type(frame) is Request
                    seen.append(frame)
                    await stream.send(encode_frame(Response(frame.id, msgspec.msgpack.encode(TEXT))))

    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, old_server)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with call.connect(f"tcp://127.0.0.1:{port}", options=ClientOptions(compression="zlib")) as conn:
                assert await conn.stub(Echo).echo(TEXT) == TEXT
            tg.cancel_scope.cancel()
    assert msgspec.msgpack.decode(seen[0].payload) == [TEXT] and seen[0].accept == 0


# -- bombs ---------------------------------------------------------------------------------------


def compressed_echo_request(request_id: int, data: bytes) -> bytes:
    """A REQUEST for Echo.echo whose payload (``data``, already compressed with its size prefix) is zlib's."""
    frame = encode_frame(Request(request_id, ECHO_KEY, data))
    return frame[:4] + bytes((frame[4] | 1 << 4,)) + frame[5:]


async def test_a_compression_bomb_fails_that_call_not_the_connection(worker: WorkerProcess) -> None:
    ep = worker.endpoint
    assert ep is not None
    # 64 MiB of zeros in ~64 KiB, declared as 1 KiB: decompression stops at what was declared.
    bomb = struct.pack("<I", 1024) + zlib.compress(bytes(64 << 20), 9)
    # Declared over the server's maximum frame: refused before decompressing anything.
    huge = struct.pack("<I", (64 << 20) + 1) + zlib.compress(bytes(1000))
    honest = compress(CODECS["zlib"], msgspec.msgpack.encode([TEXT]))
    assert honest is not None
    with anyio.fail_after(15):
        stream = await anyio.connect_tcp(ep.host, ep.port)
        async with stream:
            await stream.send(encode_hello(Hello(1, 3, 64 << 20)))
            decoder = FrameDecoder(64 << 20, expect="hello_reply")
            await stream.send(compressed_echo_request(1, bomb) + compressed_echo_request(2, huge))
            await stream.send(compressed_echo_request(3, honest))
            frames: list[object] = []
            while len(frames) < 5:
                decoder.receive_data(await stream.receive())
                frames += decoder.frames()
    assert type(frames[0]) is HelloReply and frames[0].version == 3
    assert type(frames[1]) is Settings and "zlib" in frames[1].codecs
    by_id = {f.id: f for f in frames[2:]}  # type: ignore[attr-defined]
    assert (
        type(by_id[1]) is Error and by_id[1].code == "invalid_argument" and "1024 bytes it declared" in by_id[1].message
    )
    assert type(by_id[2]) is Error and "over the limit" in by_id[2].message
    assert type(by_id[3]) is Response and msgspec.msgpack.decode(by_id[3].payload) == TEXT


def test_decompress_is_bounded_by_the_declared_size() -> None:
    for codec in CODECS.values():
        packed = compress(codec, TEXT)
        assert packed is not None and decompress(codec.id, packed, len(TEXT)) == TEXT
        with pytest.raises(CompressionError, match="over the limit"):
            decompress(codec.id, packed, len(TEXT) - 1)
        lying = struct.pack("<I", 100) + packed[4:]
        with pytest.raises(CompressionError):
            decompress(codec.id, lying, len(TEXT))
        with pytest.raises(CompressionError):
            decompress(codec.id, packed[:4] + b"\xff" * 64, len(TEXT))
    with pytest.raises(CompressionError, match="codec 9"):
        decompress(9, b"\x00" * 8, 100)


def test_codecs_are_checked_when_options_are_made() -> None:
    with pytest.raises(ValueError, match="'brotli' is not available"):
        ClientOptions(compression="brotli")
    with pytest.raises(ValueError, match="not the string"):
        ServerOptions(compression="zlib")
    assert [c.name for c in codecs_named(["zlib"])] == ["zlib"]
