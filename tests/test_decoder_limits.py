"""Hostile-peer limits of the sans-IO codec (issue 11), each a regression test that fails on the old code.

- A frame header announcing a large body allocates nothing ahead of the
  body's bytes (it used to allocate and zero-fill the announced size at once:
  13 bytes bought 64 MiB, held for as long as the peer kept the connection).
- A request's metadata count and header size are capped before any entry is
  parsed (65,535 entries used to cost ~70 ms of CPU per frame).
- A received ``tracestate`` that is not W3C-valid is dropped without logging
  (OpenTelemetry's parser logged it verbatim, once per request, newlines and all).
- End to end: a real worker process (asyncio and trio servers) sent a 13-byte
  header announcing a body at its maximum frame size keeps its RSS.
"""

from __future__ import annotations

import logging
import struct
import time
import tracemalloc
from collections.abc import Iterator

import anyio
import pytest
from anyio.abc import SocketStream
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from callrt.errors import LocalProtocolError, RemoteProtocolError
from callrt.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAX_METADATA_ENTRIES,
    MAX_REQUEST_HEADER_SIZE,
    FrameDecoder,
    Hello,
    HelloReply,
    Ping,
    Pong,
    Request,
    Response,
    TraceContext,
    encode_frame,
    encode_hello,
    encode_hello_reply,
    encode_request_header,
)
from callrt.testing import WorkerProcess
from callrt.tracing import parse_tracestate, server_context
from tests.support import rss_kib

HEADER = struct.Struct("<IBQ")  # body length, kind, id: docs/protocol.md, section 2
KEY = bytes(range(16))
MIB = 1 << 20


def fed(decoder: FrameDecoder, data: bytes) -> list[object]:
    decoder.receive_data(data)
    out: list[object] = []
    while True:
        frames = decoder.frames()
        out += frames
        if not decoder.more:
            return out


# -- (a) no allocation ahead of the bytes received --------------------------------


def traced(fn: object) -> tuple[int, object]:
    """Bytes ``fn()`` leaves allocated (tracemalloc), and its result."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = fn()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[0] - before, result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("expect", "opening", "kind"),
    [
        ("hello", encode_hello(Hello(1, 1, DEFAULT_MAX_FRAME_SIZE)), 1),  # a server, sent a request header
        ("hello", encode_hello(Hello(1, 1, DEFAULT_MAX_FRAME_SIZE)), 2),  # ...or a response header
        ("hello_reply", encode_hello_reply(HelloReply(1, DEFAULT_MAX_FRAME_SIZE)), 2),  # a client
    ],
    ids=["server-request", "server-response", "client-response"],
)
def test_a_header_announcing_64_mib_allocates_nothing_ahead(expect: str, opening: bytes, kind: int) -> None:
    decoder = FrameDecoder(expect=expect)
    fed(decoder, opening)
    held, frames = traced(lambda: fed(decoder, HEADER.pack(DEFAULT_MAX_FRAME_SIZE, kind, 1) + b"k" * 100))
    assert frames == []
    assert held < 64 << 10, f"{held} bytes held for 113 bytes received"
    assert decoder.partial_body_bytes == 100
    assert decoder.buffered == HEADER_SIZE + 100

    # As the body arrives, what is held follows what was received (not the announced size).
    # Each read is a fresh bytes object, as a transport gives: the decoder keeps it, no copy.
    held, _ = traced(lambda: [fed(decoder, b"x" * (256 << 10)) for _ in range(8)])
    assert 2 * MIB <= held < 2 * MIB + (64 << 10), held
    assert decoder.partial_body_bytes == 100 + 2 * MIB


def test_a_large_body_arrives_whole_and_is_held_once() -> None:
    body = bytes(range(256)) * (3 * MIB // 256 + 7)
    frame = encode_frame(Response(5, body))
    decoder = FrameDecoder()

    def receive() -> list[object]:
        out: list[object] = []
        for i in range(0, len(frame), 100_000):
            out += fed(decoder, frame[i : i + 100_000])
        return out

    held, frames = traced(receive)
    assert frames == [Response(5, body)]
    assert held < len(body) * 1.2, held  # the payload: no second copy kept
    assert decoder.partial_body_bytes == 0 and decoder.buffered == 0


def test_a_body_no_larger_than_one_delivered_gets_its_buffer_at_its_header() -> None:
    """Allocation ahead only up to what this peer already delivered in one body (the fast path of repeat calls)."""
    decoder = FrameDecoder()
    first = encode_frame(Response(1, b"a" * MIB))
    frames = [f for i in range(0, len(first), 64 << 10) for f in fed(decoder, first[i : i + (64 << 10)])]
    assert frames == [Response(1, b"a" * MIB)]
    # As large as the first: allocated at once, and counted as held.
    held, _ = traced(lambda: fed(decoder, HEADER.pack(MIB, 2, 2) + b"b" * 10))
    assert held >= MIB and decoder.partial_body_bytes == MIB
    assert fed(decoder, b"b" * (MIB - 10)) == [Response(2, b"b" * MIB)]
    # Larger than any before: nothing ahead.
    held, _ = traced(lambda: fed(decoder, HEADER.pack(MIB + 1, 2, 3) + b"c" * 10))
    assert held < 64 << 10 and decoder.partial_body_bytes == 10


def test_partial_body_bytes_counts_small_bodies_too() -> None:
    frame = encode_frame(Request(3, KEY, b"p" * 1000))
    decoder = FrameDecoder()
    assert fed(decoder, frame[:5]) == [] and decoder.partial_body_bytes == 0  # not even a header
    assert fed(decoder, frame[5:HEADER_SIZE]) == [] and decoder.partial_body_bytes == 0
    assert fed(decoder, frame[HEADER_SIZE:500]) == [] and decoder.partial_body_bytes == 500 - HEADER_SIZE
    assert fed(decoder, frame[500:]) == [Request(3, KEY, b"p" * 1000)]
    assert decoder.partial_body_bytes == 0


# -- found by fuzzing (fuzz/README.md) --------------------------------------------------


@pytest.mark.parametrize(
    "bad", [b"\xff" * 13, HEADER.pack(5, 1, 1) + KEY[:5]], ids=["unknown-kind", "truncated-request"]
)
def test_next_frame_stays_broken_after_an_error(bad: bytes) -> None:
    """decoder-server, first minute: after next_frame() raised, the next call decoded the frame after the bad one.

    frames() kept its error; next_frame() (the stream transport's handshake loop uses it)
    moved past a malformed request and went on, as if framing were not lost.
    """
    decoder = FrameDecoder()
    decoder.receive_data(bad + encode_frame(Ping(7)))
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_frame()
    for call in (decoder.next_frame, decoder.frames, decoder.next_frame):
        with pytest.raises(RemoteProtocolError) as again:
            call()
        assert again.value is first.value


# -- (b) metadata entries and header size ----------------------------------------------


def request_with_metadata_count(count: int, entries: bytes) -> bytes:
    body = KEY + b"\x04" + struct.pack("<H", count) + entries
    return HEADER.pack(len(body), 1, 1) + body


def test_65535_metadata_entries_are_refused_before_parsing() -> None:
    entry = struct.pack("<H", 1) + b"k" + struct.pack("<I", 1) + b"v"
    frame = request_with_metadata_count(0xFFFF, entry * 0xFFFF)
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    start = time.process_time()
    with pytest.raises(RemoteProtocolError, match="65535 metadata entries, more than 64"):
        decoder.frames()
    # Refused from the count alone: ~70 ms of CPU on the old code; generous bound for a noisy VM.
    assert time.process_time() - start < 0.02


def test_the_metadata_count_is_checked_before_any_entry() -> None:
    # The first entry is not UTF-8: an entry parsed first would be reported instead.
    bad_entry = struct.pack("<H", 1) + b"\xff" + struct.pack("<I", 0)
    decoder = FrameDecoder()
    decoder.receive_data(request_with_metadata_count(MAX_METADATA_ENTRIES + 1, bad_entry))
    with pytest.raises(RemoteProtocolError, match="metadata entries"):
        decoder.next_frame()


def test_metadata_up_to_the_limit_is_accepted_and_the_limit_is_configurable() -> None:
    metadata = tuple((f"k{i}", "v") for i in range(MAX_METADATA_ENTRIES))
    request = Request(1, KEY, b"", metadata=metadata)
    assert fed(FrameDecoder(), encode_frame(request)) == [request]
    with pytest.raises(RemoteProtocolError, match="64 metadata entries, more than 3"):
        fed(FrameDecoder(max_metadata_entries=3), encode_frame(request))
    more = Request(1, KEY, b"", metadata=(*metadata, ("one", "more")))
    with pytest.raises(LocalProtocolError, match="metadata entries"):
        encode_frame(more)  # a sender never sends what a receiver with the defaults refuses


def test_request_header_size_is_capped() -> None:
    caller = "c" * 40_000
    metadata = (("k", "v" * 30_000),)
    # Under the cap on each side of it, over it together: refused by the encoder...
    with pytest.raises(LocalProtocolError, match="request header over"):
        encode_request_header(1, KEY, 0, caller=caller, metadata=metadata)
    # ...and, sent anyway, by the decoder, before the field past the limit is decoded.
    head = encode_request_header(1, KEY, 0, metadata=metadata)[HEADER_SIZE:]
    body = bytearray(head)
    body[16] |= 0x08  # flags: a caller follows
    body += struct.pack("<H", len(caller)) + caller.encode() + b"payload"
    frame = HEADER.pack(len(body), 1, 1) + bytes(body)
    with pytest.raises(RemoteProtocolError, match=f"request header longer than {MAX_REQUEST_HEADER_SIZE} bytes"):
        fed(FrameDecoder(), frame)
    decoded = fed(FrameDecoder(max_request_header_size=1 << 20), frame)
    assert decoded == [Request(1, KEY, b"payload", metadata=metadata, caller=caller)]


# -- (c) tracestate ---------------------------------------------------------------------

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN_ID = bytes.fromhex("b7ad6b7169203331")

INVALID_TRACESTATES = {
    "newline": "vendor=ok\nFORGED LOG LINE level=CRITICAL",
    "cr": "vendor=ok\r",
    "too-long": ",".join(f"k{i}=" + "v" * 40 for i in range(12)),  # 12 valid members, 527 characters
    "33-members": ",".join(f"k{i}=v" for i in range(33)),
    "uppercase-key": "Vendor=1",
    "key-with-space": "ven dor=1",
    "value-with-equals": "vendor=a=b",
    "empty-value": "vendor=",
    "non-ascii": "vendor=é",
    "control-char": "vendor=\x00\x1b[31m",
    "duplicate-key": "a=1,a=2",
    "no-equals": "garbage",
}


@pytest.fixture
def otel_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of the ``opentelemetry`` loggers, DEBUG and up (read ``.records`` when asserting)."""
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    return caplog


@pytest.mark.parametrize("tracestate", INVALID_TRACESTATES.values(), ids=INVALID_TRACESTATES.keys())
def test_an_invalid_tracestate_is_dropped_silently(otel_log: pytest.LogCaptureFixture, tracestate: str) -> None:
    assert parse_tracestate(tracestate) is None
    token = server_context(TraceContext(TRACE_ID, SPAN_ID, 1, tracestate))
    try:
        ctx = otel_trace.get_current_span().get_span_context()
    finally:
        otel_context.detach(token)  # type: ignore[arg-type]
    assert ctx.trace_id == int.from_bytes(TRACE_ID, "big")
    assert ctx.span_id == int.from_bytes(SPAN_ID, "big")
    assert ctx.is_remote and int(ctx.trace_flags) == 1
    assert len(ctx.trace_state) == 0
    assert [r.getMessage() for r in otel_log.records] == []


@pytest.mark.parametrize(
    ("tracestate", "pairs"),
    [
        ("vendor=abc", [("vendor", "abc")]),
        ("a=1, b=2 ,\t,c@sys=x y", [("a", "1"), ("b", "2"), ("c@sys", "x y")]),
        (",".join(f"k{i}=v" for i in range(32)), [(f"k{i}", "v") for i in range(32)]),
        ("k=" + "v" * 256, [("k", "v" * 256)]),
    ],
    ids=["one", "whitespace-and-tenant", "32-members", "256-char-value"],
)
def test_a_valid_tracestate_propagates(
    otel_log: pytest.LogCaptureFixture, tracestate: str, pairs: list[tuple[str, str]]
) -> None:
    token = server_context(TraceContext(TRACE_ID, SPAN_ID, 0, tracestate))
    try:
        ctx = otel_trace.get_current_span().get_span_context()
    finally:
        otel_context.detach(token)  # type: ignore[arg-type]
    assert list(ctx.trace_state.items()) == pairs
    assert ctx.trace_id == int.from_bytes(TRACE_ID, "big")
    assert otel_log.records == []


# -- end to end: a real worker's memory --------------------------------------------------

WORKER_MAX_FRAME = DEFAULT_MAX_FRAME_SIZE  # the default: what a deployed server accepts


@pytest.fixture(scope="module", params=["asyncio", "trio"], ids=["server=asyncio", "server=trio"])
def worker(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    options = {"max_frame_size": WORKER_MAX_FRAME, "handshake_timeout": 5.0}
    w = WorkerProcess("tcp://127.0.0.1:0", ["tests.components:Echo"], backend=request.param, options=options)
    w.start()
    yield w
    assert w.proc is not None and w.proc.poll() is None, "the server died"
    assert w.stop() == 0


async def ping_pong(stream: SocketStream, decoder: FrameDecoder, nonce: int) -> None:
    """Wait for the Pong(nonce) that answers a Ping(nonce) already sent."""
    while True:
        for frame in fed(decoder, await stream.receive()):
            if frame == Pong(nonce):
                return


@pytest.mark.anyio
async def test_a_worker_sent_huge_body_headers_keeps_its_memory(worker: WorkerProcess) -> None:
    ep = worker.endpoint
    assert ep is not None
    hello = encode_hello(Hello(1, 1, WORKER_MAX_FRAME))
    with anyio.fail_after(20):
        # Warm up the paths the attack goes through (hello, ping) before the baseline.
        async with await anyio.connect_tcp(ep.host, ep.port) as warm:
            await warm.send(hello + encode_frame(Ping(1)))
            await ping_pong(warm, FrameDecoder(expect="hello_reply"), 1)
        baseline = rss_kib(worker.pid)
        streams = []
        try:
            for i in range(4):
                stream = await anyio.connect_tcp(ep.host, ep.port)
                streams.append(stream)
                # One write: the Ping's Pong comes back only once the server has read the whole
                # of it, the 13-byte header announcing a body of the maximum size included.
                header = HEADER.pack(WORKER_MAX_FRAME, 1, 1)
                await stream.send(hello + encode_frame(Ping(100 + i)) + header + KEY + b"\x00")
                await ping_pong(stream, FrameDecoder(expect="hello_reply"), 100 + i)
            grown = rss_kib(worker.pid) - baseline
            # The old code allocated and zero-filled 4 x 64 MiB here.
            assert grown < 4 * 1024, f"RSS grew by {grown} KiB for 4 headers"
        finally:
            for stream in streams:
                await stream.aclose()
