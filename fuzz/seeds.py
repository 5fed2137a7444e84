"""Seed inputs for each target: valid streams the fuzzer mutates from (deep coverage from the start)."""

from __future__ import annotations

import struct

from callrt.protocol import (
    Cancel,
    Compressed,
    Credit,
    End,
    Error,
    Frame,
    GoAway,
    Hello,
    HelloReply,
    Item,
    Ping,
    Pong,
    Request,
    Response,
    Settings,
    TraceContext,
    encode_frame,
    encode_hello,
    encode_hello_reply,
)
from fuzz.connection import server_connection_seeds

KEY = bytes(range(16))
_HEADER = struct.Struct("<IBQ")


def _decoder_input(
    stream: bytes, *, with_hello: bool = True, frames_api: bool = False, pad_reads: int = 0, cuts: bytes = b""
) -> bytes:
    options = (1 if with_hello else 0) | (2 if frames_api else 0) | (pad_reads // 2) << 3
    return bytes((options,)) + cuts + b"\x00" + stream


def decoder_server() -> list[bytes]:
    trace = TraceContext(b"t" * 16, b"s" * 8, 1, "vendor=abc,other@sys=x y")
    requests = [
        Request(1, KEY, b"\x91\xa2hi"),
        Request(2, KEY, b"\x90", deadline_us=5_000_000),
        Request(3, KEY, b"\x91\x01", 10, trace, (("tenant", "t1"), ("k", "")), "shop.Cart", 42),
        Request(4, KEY, b"", metadata=(("a", "b"),)),
        Request(5, KEY, b"", caller="me"),
        Request(6, KEY, b"", shard_key=7),
    ]
    others: list[Frame] = [Cancel(1), Ping(9), Pong(9)]
    stream = b"".join(encode_frame(f) for f in [*requests, *others])
    seeds = [
        _decoder_input(stream),
        _decoder_input(stream, frames_api=True, cuts=b"\x05\x0d\x01\x40"),
        # A large request body announced, the filler completing it.
        _decoder_input(_HEADER.pack(8 * 4096 + 17, 1, 1) + KEY + b"\x00", pad_reads=8, frames_api=True),
        # A large response (the wrong direction for a server, but the decoder's to parse).
        _decoder_input(_HEADER.pack(16 * 4096, 2, 1), pad_reads=16),
    ]
    seeds += [_decoder_input(encode_frame(r), cuts=b"\x03\x11") for r in requests]
    # Two large requests, the second no larger than the first (its buffer is allocated at its header).
    seeds.append(
        _decoder_input(
            _HEADER.pack(20 * 4096 + 17, 1, 1)
            + KEY
            + b"\x00FILL\x14"
            + _HEADER.pack(18 * 4096 + 25, 1, 2)
            + KEY
            + b"\x01"
            + bytes(8)
            + b"FILL\x12"
            + encode_frame(Ping(5)),
            frames_api=True,
        )
    )
    # Small limits (options bit 2): max frame 0x040123 + 1, header limit 17 + 0x124, at most 1 entry.
    seeds.append(b"\x05\x23\x01\x04\x00" + stream)
    # Protocol version 3 (the hello in the input, so that its version is chosen): streams and
    # compression; the same frames after a version 1 hello are protocol errors.
    v3: list[Frame] = [
        Request(8, KEY, b"\x91\x03", accept=3),
        Credit(8, 256, 1 << 20),
        Item(8, b"\xa1x"),
        Item(8, b""),
        End(8),
        End(9, "ValueError: no more"),
        Compressed(Request(10, KEY, b"\x10\x00\x00\x00junk", deadline_us=9), 1),
        Compressed(Item(8, b"\x05\x00\x00\x00xxxxx"), 3),
        Cancel(8),
    ]
    v3_stream = b"".join(encode_frame(f) for f in v3)
    seeds.append(_decoder_input(encode_hello(Hello(1, 3, 1 << 20)) + v3_stream, with_hello=False))
    seeds.append(_decoder_input(encode_hello(Hello(1, 2, 1 << 20)) + v3_stream, with_hello=False))
    seeds.append(_decoder_input(_HEADER.pack(9 * 4096, 0x18, 8), pad_reads=9, with_hello=False))  # large, compressed
    return seeds


def decoder_client() -> list[bytes]:
    frames: list[Frame] = [
        Response(1, b"\xa2ok"),
        Error(2, "invalid_argument", "InvalidArgument", "bad x", "Traceback..."),
        Ping(3),
        Pong(3),
        GoAway("draining"),
        Response(4, b""),
    ]
    stream = b"".join(encode_frame(f) for f in frames)
    return [
        _decoder_input(stream),
        _decoder_input(stream, frames_api=True, cuts=b"\x02\x0c\x01"),
        _decoder_input(_HEADER.pack(20 * 4096, 2, 1), pad_reads=20, frames_api=True),
        _decoder_input(stream + _HEADER.pack(17 * 4096, 2, 2), pad_reads=18),
        _decoder_input(
            _HEADER.pack(24 * 4096, 2, 1) + b"FILL\x18" + _HEADER.pack(16 * 4096, 2, 2) + b"FILL\x10" + stream
        ),
        _decoder_input(encode_hello_reply(HelloReply(0, 1 << 20)), with_hello=False),  # no common version
        # Protocol version 2: an error body may carry a declared exception's args (a fifth element);
        # on a version 1 connection the same body is a protocol error.
        _decoder_input(
            encode_hello_reply(HelloReply(2, 1 << 20))
            + encode_frame(Error(7, "aborted", "Out", "none left", "", b"\x91\x01")),
            with_hello=False,
        ),
        _decoder_input(encode_frame(Error(7, "aborted", "Out", "none left", "", b"\x91\x01"))),
        _decoder_input(encode_hello_reply(HelloReply(1, 1 << 20)) + stream, with_hello=False, cuts=b"\x01\x01\x07"),
        # Protocol version 3: the server's SETTINGS, stream items and credit, compressed replies.
        _decoder_input(
            encode_hello_reply(HelloReply(3, 1 << 20))
            + b"".join(
                encode_frame(f)
                for f in [
                    Settings(("lz4", "zlib", "zstd")),
                    Item(4, b"\x01"),
                    Credit(4, 128, 1 << 19),
                    Compressed(Response(4, b"\x10\x00\x00\x00zz"), 2),
                    Compressed(Item(4, b"\x10\x00\x00\x00zz"), 1),
                    Response(5, b"\xc0"),
                ]
            ),
            with_hello=False,
            cuts=b"\x0c\x05",
        ),
        *(_decoder_input(encode_frame(f)) for f in frames),
    ]


def tracestate() -> list[bytes]:
    return [
        b"vendor=abc",
        b"a=1, b=2 ,\t,c@sys=x y",
        b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        ",".join(f"k{i}=v" for i in range(32)).encode(),
        b"k=" + b"v" * 256,
        b"bad\nline=1",
    ]


SEEDS = {
    "decoder-server": decoder_server,
    "decoder-client": decoder_client,
    "tracestate": tracestate,
    "server-connection": server_connection_seeds,
}
