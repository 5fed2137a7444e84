"""The sans-IO wire codec: round trips, splitting, fuzzing and a table of malformed input."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callrt.errors import LocalProtocolError, RemoteProtocolError
from callrt.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    HELLO_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Cancel,
    Compressed,
    Credit,
    End,
    Error,
    Frame,
    FrameDecoder,
    FrameKind,
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
    choose_version,
    decode_hello,
    decode_hello_reply,
    encode_frame,
    encode_hello,
    encode_hello_reply,
    encode_plain_request_header,
    encode_request_header,
    encode_response_header,
)

MAX_U64 = (1 << 64) - 1
MAX_U32 = (1 << 32) - 1
KEY = bytes(range(16))

HEADER = struct.Struct("<IBQ")

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ----------------------------------------------------------------

u64 = st.integers(0, MAX_U64)
text = st.text(max_size=24)  # hypothesis never generates lone surrogates here
payloads = st.binary(max_size=96)

traces = st.builds(
    TraceContext,
    trace_id=st.binary(min_size=16, max_size=16),
    span_id=st.binary(min_size=8, max_size=8),
    flags=st.integers(0, 255),
    tracestate=text,
)

requests = st.builds(
    Request,
    id=u64,
    method_key=st.binary(min_size=16, max_size=16),
    payload=payloads,
    deadline_us=st.none() | u64,
    trace=st.none() | traces,
    metadata=st.lists(st.tuples(text, text), max_size=4).map(tuple),
    caller=text,
    shard_key=st.none() | u64,
    accept=st.integers(0, 15),
)
responses = st.builds(Response, id=u64, payload=payloads)
errors = st.builds(
    Error,
    id=u64,
    code=st.sampled_from(["unknown", "internal", "invalid_argument"]) | text,
    remote_type=text,
    message=text,
    traceback=st.text(max_size=200),
)
cancels = st.builds(Cancel, id=u64)
pings = st.builds(Ping, id=u64)
pongs = st.builds(Pong, id=u64)
goaways = st.builds(GoAway, reason=text)
items = st.builds(Item, id=u64, payload=payloads)
ends = st.builds(End, id=u64, error=text)
credits = st.builds(Credit, id=u64, items=st.integers(0, 2**32 - 1), size=st.integers(0, 2**32 - 1))
settings_frames = st.builds(Settings, codecs=st.lists(text, max_size=3).map(tuple))
compressed = st.builds(Compressed, frame=requests | responses | items, codec=st.integers(1, 15))

frames = st.one_of(
    requests, responses, errors, cancels, pings, pongs, goaways, items, ends, credits, settings_frames, compressed
)


def version_3_only(frame: Frame) -> bool:
    """Frames (and request fields) that versions 1 and 2 do not have."""
    return type(frame) in (Item, End, Credit, Settings, Compressed) or (type(frame) is Request and frame.accept > 0)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    lo = draw(st.integers(1, 0xFFFF))
    hi = draw(st.integers(lo, 0xFFFF))
    return Hello(lo, hi, draw(st.integers(1, MAX_U32)))


hello_replies = st.builds(HelloReply, version=st.integers(0, 0xFFFF), max_frame_size=st.integers(1, MAX_U32))
# The replies a client-side decoder accepts: no common version, or one it speaks.
acceptable_replies = st.builds(
    HelloReply,
    version=st.sampled_from([0, *SUPPORTED_VERSIONS]),
    max_frame_size=st.integers(1, MAX_U32),
)


# -- helpers -------------------------------------------------------------------


def drain(decoder: FrameDecoder) -> list[Frame]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def decode_all(data: bytes, **kwargs: object) -> list[Frame]:
    decoder = FrameDecoder(**kwargs)  # type: ignore[arg-type]
    decoder.receive_data(data)
    out = drain(decoder)
    assert decoder.buffered == 0
    return out


def feed_in_pieces(data: bytes, cuts: list[int], **kwargs: object) -> list[Frame]:
    decoder = FrameDecoder(**kwargs)  # type: ignore[arg-type]
    out: list[Frame] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        decoder.receive_data(data[prev:cut])
        prev = cut
        out += drain(decoder)
    assert decoder.buffered == 0
    return out


def decode_one(data: bytes, **kwargs: object) -> Frame:
    (frame,) = decode_all(data, **kwargs)
    return frame


def raw_frame(kind: int, ident: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), kind, ident) + body


def request_body(flags: int, *fields: bytes, key: bytes = KEY) -> bytes:
    return key + bytes([flags]) + b"".join(fields)


# -- round trips ---------------------------------------------------------------


@FAST
@given(frames)
def test_round_trip(frame: Frame) -> None:
    assert decode_one(encode_frame(frame)) == frame


@FAST
@given(requests)
def test_request_header_plus_payload_is_the_frame(request: Request) -> None:
    header = encode_request_header(
        request.id,
        request.method_key,
        len(request.payload),
        request.deadline_us,
        request.trace,
        request.metadata,
        request.caller,
        request.shard_key,
        request.accept,
    )
    assert header + request.payload == encode_frame(request)
    size, kind, ident = HEADER.unpack_from(header)
    assert (size, kind, ident) == (len(header) - HEADER_SIZE + len(request.payload), FrameKind.REQUEST, request.id)


@FAST
@given(responses)
def test_response_header_plus_payload_is_the_frame(response: Response) -> None:
    assert encode_response_header(response.id, len(response.payload)) + response.payload == encode_frame(response)


@FAST
@given(hellos())
def test_hello_round_trip(hello: Hello) -> None:
    data = encode_frame(hello)
    assert data == encode_hello(hello)
    assert len(data) == HELLO_SIZE
    assert decode_hello(data) == hello
    assert decode_one(data, expect="hello") == hello


@FAST
@given(hello_replies)
def test_hello_reply_round_trip(reply: HelloReply) -> None:
    data = encode_frame(reply)
    assert data == encode_hello_reply(reply)
    assert len(data) == HELLO_SIZE
    assert decode_hello_reply(data) == reply


@FAST
@given(acceptable_replies)
def test_hello_reply_round_trip_through_decoder(reply: HelloReply) -> None:
    decoder = FrameDecoder(expect="hello_reply", version=PROTOCOL_VERSION)
    decoder.receive_data(encode_hello_reply(reply))
    assert decoder.next_frame() == reply
    assert decoder.version == (reply.version or PROTOCOL_VERSION)


@FAST
@given(frames, st.data())
def test_round_trip_split_anywhere(frame: Frame, data: st.DataObject) -> None:
    blob = encode_frame(frame)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    assert feed_in_pieces(blob, cuts) == [frame]


@given(
    u64,
    st.binary(min_size=16, max_size=16),
    st.integers(0, 1 << 20),
    st.none() | u64,
    st.none()
    | st.builds(
        TraceContext,
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=8, max_size=8),
        st.integers(0, 255),
        st.sampled_from(["", "congo=t61rcWkgMzE"]),
    ),
)
def test_plain_request_header_is_the_general_one(
    request_id: int, key: bytes, size: int, deadline: int | None, trace: TraceContext | None
) -> None:
    assert encode_plain_request_header(request_id, key, size, deadline, trace) == encode_request_header(
        request_id, key, size, deadline, trace
    )


@pytest.mark.parametrize(
    "trace",
    [
        TraceContext(b"t" * 15, b"s" * 8),
        TraceContext(b"t" * 16, b"s" * 9),
        TraceContext(b"t" * 16, b"s" * 8, flags=256),
        TraceContext(b"t" * 16, b"s" * 8, flags=-1),
    ],
)
def test_plain_request_header_refuses_a_bad_trace_context(trace: TraceContext) -> None:
    with pytest.raises(LocalProtocolError):
        encode_plain_request_header(1, KEY, 0, None, trace)


@FAST
@given(st.lists(frames, max_size=8), st.data())
def test_concatenated_frames(frame_list: list[Frame], data: st.DataObject) -> None:
    blob = b"".join(encode_frame(f) for f in frame_list)
    assert decode_all(blob) == frame_list
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=12))
    assert feed_in_pieces(blob, cuts) == frame_list


@FAST
@given(hellos(), st.lists(frames, max_size=5), st.data())
def test_hello_then_frames(hello: Hello, frame_list: list[Frame], data: st.DataObject) -> None:
    if 0 < choose_version(hello) < 3:
        frame_list = [f for f in frame_list if not version_3_only(f)]
    blob = encode_hello(hello) + b"".join(encode_frame(f) for f in frame_list)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    assert feed_in_pieces(blob, cuts, expect="hello") == [hello, *frame_list]


@FAST
@given(acceptable_replies, st.lists(frames, max_size=5), st.data())
def test_hello_reply_then_frames(reply: HelloReply, frame_list: list[Frame], data: st.DataObject) -> None:
    if 0 < reply.version < 3:
        frame_list = [f for f in frame_list if not version_3_only(f)]
    blob = encode_hello_reply(reply) + b"".join(encode_frame(f) for f in frame_list)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    assert feed_in_pieces(blob, cuts, expect="hello_reply") == [reply, *frame_list]


def test_known_encodings() -> None:
    """Pinned bytes: a change of layout must be a deliberate (versioned) one."""
    assert encode_frame(Ping(1)) == bytes.fromhex("00000000 05 0100000000000000")
    assert encode_frame(Cancel(0x0102)) == bytes.fromhex("00000000 04 0201000000000000")
    assert encode_frame(Response(7, b"ab")) == bytes.fromhex("02000000 02 0700000000000000") + b"ab"
    assert encode_frame(GoAway("x")) == bytes.fromhex("01000000 07 0000000000000000") + b"x"
    assert encode_frame(Request(3, KEY, b"p")) == bytes.fromhex("12000000 01 0300000000000000") + KEY + b"\x00p"
    assert encode_frame(Request(3, KEY, b"", deadline_us=5, shard_key=9)) == (
        bytes.fromhex("21000000 01 0300000000000000")
        + KEY
        + bytes([0x11])
        + (5).to_bytes(8, "little")
        + (9).to_bytes(8, "little")
    )
    assert encode_hello(Hello(1, 2, 1024)) == MAGIC + bytes.fromhex("0100 0200 00040000")
    assert encode_hello_reply(HelloReply(1, 1024)) == MAGIC + bytes.fromhex("0100 0000 00040000")


def test_request_with_every_field() -> None:
    request = Request(
        MAX_U64,
        KEY,
        b"payload",
        deadline_us=MAX_U64,
        trace=TraceContext(b"t" * 16, b"s" * 8, 255, "vendor=é"),
        metadata=(("k", "v"), ("", ""), ("ключ", "значение" * 100)),
        caller="caller-ü",
        shard_key=0,
    )
    assert decode_one(encode_frame(request)) == request


# -- fuzzing -------------------------------------------------------------------


def fuzz_decoder(data: bytes, cuts: list[int], **kwargs: object) -> None:
    """Feed ``data`` in pieces: frames come out, or RemoteProtocolError, nothing else."""
    decoder = FrameDecoder(**kwargs)  # type: ignore[arg-type]
    prev = 0
    try:
        for cut in [*sorted(cuts), len(data)]:
            decoder.receive_data(data[prev:cut])
            prev = cut
            while (frame := decoder.next_frame()) is not None:
                assert isinstance(frame, Frame.__args__)  # type: ignore[attr-defined]
    except RemoteProtocolError:
        pass  # the connection would be closed here
    except Exception as exc:  # pragma: no cover - this is the failure being looked for
        pytest.fail(f"decoder raised {type(exc).__name__}: {exc!r} for {data!r}")


NO_PREFIX = st.just(b"")


@st.composite
def mutated_streams(draw: st.DrawFn, prefix: st.SearchStrategy[bytes] = NO_PREFIX) -> bytes:
    """Valid frames, then a few bytes overwritten, inserted or cut: near misses reach deep into the parser."""
    blob = bytearray(draw(prefix) + b"".join(encode_frame(f) for f in draw(st.lists(frames, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, len(blob)))
        if op == "set" and i < len(blob):
            blob[i] = draw(st.integers(0, 255))
        elif op == "insert":
            blob[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del blob[i : i + draw(st.integers(1, 4))]
        elif op == "truncate":
            del blob[i:]
    return bytes(blob)


hello_prefix = hellos().map(encode_hello)
reply_prefix = acceptable_replies.map(encode_hello_reply)
any_bytes = st.binary(max_size=300)
max_sizes = st.sampled_from([DEFAULT_MAX_FRAME_SIZE, 0, 16, 64, 1000])


@FUZZ
@given(any_bytes | mutated_streams(), max_sizes, st.lists(st.integers(0, 400), max_size=6))
def test_fuzz_decoder_no_handshake(data: bytes, max_size: int, cuts: list[int]) -> None:
    fuzz_decoder(data, [min(c, len(data)) for c in cuts], max_frame_size=max_size)


@FUZZ
@given(
    any_bytes | any_bytes.map(MAGIC.__add__) | mutated_streams(hello_prefix),
    max_sizes,
    st.lists(st.integers(0, 400), max_size=6),
)
def test_fuzz_decoder_expecting_hello(data: bytes, max_size: int, cuts: list[int]) -> None:
    fuzz_decoder(data, [min(c, len(data)) for c in cuts], max_frame_size=max_size, expect="hello")


@FUZZ
@given(
    any_bytes | any_bytes.map(MAGIC.__add__) | mutated_streams(reply_prefix),
    max_sizes,
    st.lists(st.integers(0, 400), max_size=6),
)
def test_fuzz_decoder_expecting_hello_reply(data: bytes, max_size: int, cuts: list[int]) -> None:
    fuzz_decoder(data, [min(c, len(data)) for c in cuts], max_frame_size=max_size, expect="hello_reply")


def _outcome(data: bytes, cuts: list[int], batched: bool, **kwargs: object) -> tuple[list[Frame], str | None]:
    """The frames a decoder gives for ``data`` fed in pieces, and the error that ended them, if any."""
    decoder = FrameDecoder(**kwargs)  # type: ignore[arg-type]
    out: list[Frame] = []
    prev = 0
    try:
        for cut in [*sorted(min(c, len(data)) for c in cuts), len(data)]:
            piece = data[prev:cut]
            decoder.receive_data(bytearray(piece) if cut % 3 == 1 else piece)  # bytearrays are accepted too
            prev = cut
            if batched:  # as the transports call it
                frames = decoder.frames()
                while frames:
                    out += frames
                    frames = decoder.frames() if decoder.more else []
                assert decoder.frames() == []  # ``more`` was false: nothing was left behind
            else:
                while (frame := decoder.next_frame()) is not None:
                    out.append(frame)
    except RemoteProtocolError as exc:
        return out, str(exc)
    return out, None


@FUZZ
@given(
    any_bytes | mutated_streams() | mutated_streams(hello_prefix) | mutated_streams(reply_prefix),
    max_sizes,
    st.sampled_from([None, "hello", "hello_reply"]),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_frames_is_next_frame_in_batches(data: bytes, max_size: int, expect: str | None, cuts: list[int]) -> None:
    """frames() gives the same frames as next_frame(), then the same error: the ones before a bad frame come first."""
    assert _outcome(data, cuts, True, max_frame_size=max_size, expect=expect) == _outcome(
        data, cuts, False, max_frame_size=max_size, expect=expect
    )


def test_frames_returns_the_good_frames_before_an_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(Response(1, b"a")) + encode_frame(Ping(2)) + b"\x00\x00\x00\x00\x0c" + bytes(8))
    assert decoder.frames() == [Response(1, b"a"), Ping(2)]
    assert decoder.more
    with pytest.raises(RemoteProtocolError, match="unknown frame kind 12"):
        decoder.frames()
    with pytest.raises(RemoteProtocolError):  # the stream stays broken
        decoder.next_frame()


@FUZZ
@given(st.integers(1, 7), u64, st.binary(max_size=200))
def test_fuzz_bodies_of_every_kind(kind: int, ident: int, body: bytes) -> None:
    """A valid header with an arbitrary body: each kind's body parser sees garbage."""
    fuzz_decoder(raw_frame(kind, ident, body), [])
    fuzz_decoder(raw_frame(kind, ident, KEY + body), [])


@FUZZ
@given(st.integers(0, 0xFF), st.binary(max_size=120))
def test_fuzz_request_headers(flags: int, rest: bytes) -> None:
    fuzz_decoder(raw_frame(1, 1, request_body(flags, rest)), [])


# -- handshake table -----------------------------------------------------------


@pytest.mark.parametrize("expect", ["hello", "hello_reply"])
@pytest.mark.parametrize("data", [b"X", b"C\x00", b"CLX", b"CLRX", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01"])
def test_wrong_magic_is_reported_early(expect: str, data: bytes) -> None:
    decoder = FrameDecoder(expect=expect)
    decoder.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="magic"):
        decoder.next_frame()


@pytest.mark.parametrize("expect", ["hello", "hello_reply"])
def test_magic_prefix_waits_for_more(expect: str) -> None:
    decoder = FrameDecoder(expect=expect)
    assert decoder.next_frame() is None
    for i in range(1, 5):
        decoder.receive_data(MAGIC[i - 1 : i])
        assert decoder.next_frame() is None
    decoder.receive_data(b"\x01\x00\x01\x00\x00\x01\x00")  # 11 bytes in all
    assert decoder.next_frame() is None
    assert decoder.buffered == HELLO_SIZE - 1


@pytest.mark.parametrize(
    ("lo", "hi", "max_frame"),
    [(0, 1, 100), (0, 0, 100), (2, 1, 100), (0xFFFF, 1, 100), (1, 1, 0)],
)
def test_invalid_hello(lo: int, hi: int, max_frame: int) -> None:
    data = struct.pack("<4sHHI", MAGIC, lo, hi, max_frame)
    with pytest.raises(RemoteProtocolError):
        decode_hello(data)
    decoder = FrameDecoder(expect="hello")
    decoder.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    with pytest.raises(LocalProtocolError):
        encode_hello(Hello(lo, hi, max_frame))


@pytest.mark.parametrize("data", [b"", MAGIC, MAGIC + bytes(7), MAGIC + bytes(9)])
def test_hello_wrong_length(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_hello(data)
    with pytest.raises(RemoteProtocolError):
        decode_hello_reply(data)


def test_hello_wrong_magic_full_length() -> None:
    data = b"CLRU" + encode_hello(Hello(1, 1, 10))[4:]
    with pytest.raises(RemoteProtocolError, match="magic"):
        decode_hello(data)
    with pytest.raises(RemoteProtocolError, match="magic"):
        decode_hello_reply(data)


@pytest.mark.parametrize(("reserved", "max_frame"), [(1, 100), (0xFFFF, 100), (0, 0)])
def test_invalid_hello_reply(reserved: int, max_frame: int) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_hello_reply(struct.pack("<4sHHI", MAGIC, 1, reserved, max_frame))


def test_hello_reply_with_unsupported_version() -> None:
    unsupported = SUPPORTED_VERSIONS[-1] + 1
    data = encode_hello_reply(HelloReply(unsupported, 100))
    assert decode_hello_reply(data) == HelloReply(unsupported, 100)  # the parser alone accepts it
    decoder = FrameDecoder(expect="hello_reply")
    decoder.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="unsupported version"):
        decoder.next_frame()


def test_hello_reply_without_common_version_keeps_decoder_version() -> None:
    decoder = FrameDecoder(expect="hello_reply")
    decoder.receive_data(encode_hello_reply(HelloReply(0, 100)))
    assert decoder.next_frame() == HelloReply(0, 100)
    assert decoder.version == PROTOCOL_VERSION


def test_hello_sets_negotiated_version() -> None:
    decoder = FrameDecoder(expect="hello", version=99)
    decoder.receive_data(encode_hello(Hello(1, 0xFFFF, 100)))
    assert decoder.next_frame() == Hello(1, 0xFFFF, 100)
    assert decoder.version == SUPPORTED_VERSIONS[-1]


def test_hello_without_common_version_keeps_decoder_version() -> None:
    decoder = FrameDecoder(expect="hello", version=1)
    hello = Hello(SUPPORTED_VERSIONS[-1] + 1, SUPPORTED_VERSIONS[-1] + 5, 100)
    decoder.receive_data(encode_hello(hello))
    assert decoder.next_frame() == hello
    assert decoder.version == 1


def test_hello_only_once() -> None:
    """After the hello, another hello is not a frame: 'CLRT' read as a header is an oversized body."""
    decoder = FrameDecoder(expect="hello")
    decoder.receive_data(encode_hello(Hello(1, 1, 100)) * 2 + b"\x00")
    assert decoder.next_frame() == Hello(1, 1, 100)
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("lo", "hi", "chosen"),
    [
        (1, 1, 1),
        (1, 2, 2),
        (1, 0xFFFF, SUPPORTED_VERSIONS[-1]),
        (SUPPORTED_VERSIONS[-1], SUPPORTED_VERSIONS[-1], SUPPORTED_VERSIONS[-1]),
        (SUPPORTED_VERSIONS[-1] + 1, SUPPORTED_VERSIONS[-1] + 3, 0),
        (0xFFFF, 0xFFFF, 0),
    ],
)
def test_choose_version(lo: int, hi: int, chosen: int) -> None:
    assert choose_version(Hello(lo, hi, 100)) == chosen


@FAST
@given(hellos())
def test_choose_version_is_common_and_highest(hello: Hello) -> None:
    chosen = choose_version(hello)
    common = [v for v in SUPPORTED_VERSIONS if hello.min_version <= v <= hello.max_version]
    assert chosen == (max(common) if common else 0)


def test_decoder_rejects_bad_expect() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(expect="helo")


# -- frame table ---------------------------------------------------------------


def test_oversized_body_rejected_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data(HEADER.pack(101, 2, 1))  # 13 bytes, no body
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.next_frame()


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 7, 0, 200])
def test_oversized_body_rejected_for_any_kind(kind: int) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(HEADER.pack(MAX_U32, kind, 0))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_body_at_the_maximum_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data(HEADER.pack(100, 2, 1))
    assert decoder.next_frame() is None
    decoder.receive_data(bytes(100))
    assert decoder.next_frame() == Response(1, bytes(100))


def test_max_frame_size_zero_allows_only_empty_bodies() -> None:
    assert decode_all(encode_frame(Ping(1)) + encode_frame(Response(2, b"")), max_frame_size=0) == [
        Ping(1),
        Response(2, b""),
    ]
    with pytest.raises(RemoteProtocolError):
        decode_all(encode_frame(Response(2, b"x")), max_frame_size=0)


@pytest.mark.parametrize("kind", [0, 12, 0x7F, 0xFF, 0x13, 0x84])
def test_unknown_frame_kind(kind: int) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(HEADER.pack(0, kind, 1))
    with pytest.raises(RemoteProtocolError, match="kind"):
        decoder.next_frame()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("frame", [Item(1, b"\x01"), End(1), Credit(1, 4, 100)])
def test_stream_frames_need_version_3(version: int, frame: Frame) -> None:
    for batched in (True, False):
        decoder = FrameDecoder(version=version)
        decoder.receive_data(encode_frame(frame))
        with pytest.raises(RemoteProtocolError, match="need protocol version 3"):
            decoder.frames() if batched else decoder.next_frame()
    assert decode_all(encode_frame(frame)) == [frame]  # version 3 (the default)


@pytest.mark.parametrize("size", [0, 7, 9])
def test_credit_body_is_eight_bytes(size: int) -> None:
    with pytest.raises(RemoteProtocolError, match="CREDIT frame must have an 8-byte body"):
        decode_all(raw_frame(10, 1, bytes(size)))


def test_stream_frames_on_the_wire() -> None:
    assert encode_frame(Item(2, b"\x05")) == bytes.fromhex("01000000 08 0200000000000000 05")
    assert encode_frame(End(2)) == bytes.fromhex("00000000 09 0200000000000000")
    assert encode_frame(End(2, "E")) == bytes.fromhex("01000000 09 0200000000000000 45")
    assert encode_frame(Credit(2, 3, 256)) == bytes.fromhex("08000000 0a 0200000000000000 03000000 00010000")


@pytest.mark.parametrize("body", [b"", KEY[:15], KEY])
def test_request_shorter_than_key_and_flags(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode_all(raw_frame(1, 1, body))


def full_request_body() -> bytes:
    request = Request(
        1,
        KEY,
        b"",
        deadline_us=1,
        trace=TraceContext(b"t" * 16, b"s" * 8, 1, "ts"),
        metadata=(("k", "v"),),
        caller="me",
        shard_key=2,
    )
    return encode_frame(request)[HEADER_SIZE:]


@pytest.mark.parametrize("length", range(17, len(full_request_body())))
def test_truncated_request_header(length: int) -> None:
    """Every optional field is read in full: a body that stops inside the header fields is rejected."""
    with pytest.raises(RemoteProtocolError, match="overruns"):
        decode_all(raw_frame(1, 1, full_request_body()[:length]))


@pytest.mark.parametrize(
    ("flags", "fields"),
    [
        (0x01, b"\x00" * 7),  # deadline: 7 of 8 bytes
        (0x02, b"\x00" * 26),  # trace: 26 of 27 fixed bytes
        (0x02, b"t" * 16 + b"s" * 8 + b"\x00" + b"\x05\x00" + b"abcd"),  # tracestate 4 of 5
        (0x04, b"\x01"),  # metadata count: 1 of 2 bytes
        (0x04, b"\x02\x00" + b"\x01\x00k\x01\x00\x00\x00v"),  # 1 of 2 entries
        (0x04, b"\x01\x00" + b"\x01\x00k\x05\x00\x00\x00v"),  # value 1 of 5 bytes
        (0x08, b"\x03\x00ab"),  # caller 2 of 3 bytes
        (0x10, b"\x00" * 4),  # shard key: 4 of 8 bytes
    ],
)
def test_request_field_overruns_frame(flags: int, fields: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="overruns"):
        decode_all(raw_frame(1, 1, request_body(flags, fields)))


@pytest.mark.parametrize(("flags", "version"), [(0x20, 2), (0x21, 1), (0x40, 3), (0x80, 3), (0xFF, 3), (0x41, 3)])
def test_unknown_request_flags(flags: int, version: int) -> None:
    with pytest.raises(RemoteProtocolError, match="flags"):
        decode_all(raw_frame(1, 1, request_body(flags, b"\x00" * 64)), version=version)


def test_request_payload_follows_header_fields() -> None:
    body = request_body(0x11, (7).to_bytes(8, "little"), (9).to_bytes(8, "little")) + b"rest"
    assert decode_one(raw_frame(1, 5, body)) == Request(5, KEY, b"rest", deadline_us=7, shard_key=9)


def test_request_in_unknown_version_is_rejected() -> None:
    unknown = SUPPORTED_VERSIONS[-1] + 1
    with pytest.raises(RemoteProtocolError, match="version"):
        decode_all(encode_frame(Request(1, KEY, b"")), version=unknown)
    # Other frames do not depend on the version.
    assert decode_all(encode_frame(Ping(1)), version=unknown) == [Ping(1)]


@pytest.mark.parametrize("version", list(SUPPORTED_VERSIONS))
def test_versions_1_and_2_share_the_request_layout(version: int) -> None:
    request = Request(7, KEY, b"\x91\x01", deadline_us=5, caller="c")
    assert decode_all(encode_frame(request), version=version) == [request]


def test_error_args_are_a_fifth_element_in_version_2() -> None:
    args = msgspec.msgpack.encode(("sku-1", 3))
    frame = Error(1, "failed_precondition", "shop.OutOfStock", "only 3 left", "", args)
    data = encode_frame(frame)
    assert data[HEADER_SIZE:] == msgspec.msgpack.encode(
        ("failed_precondition", "shop.OutOfStock", "only 3 left", "", args)
    )
    assert data[HEADER_SIZE] == 0x95  # an array of five; the fifth is bin 8 holding the args' own MessagePack
    assert decode_all(data, version=2) == [frame]
    # Without args the body is version 1's four strings, which every version reads.
    plain = Error(2, "unknown", "KeyError", "'x'")
    assert encode_frame(plain)[HEADER_SIZE] == 0x94
    assert decode_all(encode_frame(plain), version=1) == decode_all(encode_frame(plain), version=2) == [plain]
    # A version 1 peer never sends a fifth element.
    with pytest.raises(RemoteProtocolError, match="version 2"):
        decode_all(data, version=1)
    with pytest.raises(RemoteProtocolError, match="error body"):
        decode_all(raw_frame(FrameKind.ERROR, 1, msgspec.msgpack.encode(("a", "b", "c", "d", b"", "f"))), version=2)


@pytest.mark.parametrize("kind", [FrameKind.CANCEL, FrameKind.PING, FrameKind.PONG])
def test_empty_body_frames_with_a_body(kind: int) -> None:
    with pytest.raises(RemoteProtocolError, match="empty body"):
        decode_all(raw_frame(kind, 1, b"x"))


@pytest.mark.parametrize("ident", [1, MAX_U64])
def test_goaway_with_nonzero_id(ident: int) -> None:
    with pytest.raises(RemoteProtocolError, match="id 0"):
        decode_all(raw_frame(FrameKind.GOAWAY, ident, b"bye"))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode(("a", "b", "c")),
        msgspec.msgpack.encode(("a", "b", "c", "d", "e")),
        msgspec.msgpack.encode(("a", "b", "c", 4)),
        msgspec.msgpack.encode({"code": "a"}),
        msgspec.msgpack.encode(("a", "b", "c", "d")) + b"\x00",  # trailing bytes
        msgspec.msgpack.encode(("a", "b", "c", "d"))[:-1],  # truncated
        b"\x94\xa1\xff\xa0\xa0\xa0",  # a str that is not UTF-8
    ],
)
def test_malformed_error_body(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="error body"):
        decode_all(raw_frame(FrameKind.ERROR, 1, body))


BAD_UTF8 = b"\xff\xfe"


@pytest.mark.parametrize(
    "frame",
    [
        raw_frame(FrameKind.GOAWAY, 0, BAD_UTF8),
        raw_frame(1, 1, request_body(0x02, b"t" * 16 + b"s" * 8 + b"\x00" + b"\x02\x00" + BAD_UTF8)),
        raw_frame(1, 1, request_body(0x04, b"\x01\x00" + b"\x02\x00" + BAD_UTF8 + b"\x00\x00\x00\x00")),
        raw_frame(1, 1, request_body(0x04, b"\x01\x00" + b"\x00\x00" + b"\x02\x00\x00\x00" + BAD_UTF8)),
        raw_frame(1, 1, request_body(0x08, b"\x02\x00" + BAD_UTF8)),
        raw_frame(1, 1, request_body(0x08, b"\x01\x00" + b"\xed\xa0\x80"[:1])),
        raw_frame(1, 1, request_body(0x08, b"\x03\x00" + b"\xed\xa0\x80")),  # an encoded surrogate
    ],
    ids=["goaway", "tracestate", "metadata-key", "metadata-value", "caller", "caller-partial", "caller-surrogate"],
)
def test_non_utf8_strings(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        decode_all(frame)


# -- encoder errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        Request(1, b"short", b""),
        Request(1, KEY + b"x", b""),
        Request(1, b"", b"", deadline_us=1),
        Request(1, KEY, b"", deadline_us=-1),
        Request(1, KEY, b"", deadline_us=MAX_U64 + 1),
        Request(1, KEY, b"", shard_key=-1),
        Request(1, KEY, b"", shard_key=MAX_U64 + 1),
        Request(1, KEY, b"", trace=TraceContext(b"t" * 15, b"s" * 8)),
        Request(1, KEY, b"", trace=TraceContext(b"t" * 16, b"s" * 9)),
        Request(1, KEY, b"", trace=TraceContext(b"t" * 16, b"s" * 8, flags=256)),
        Request(1, KEY, b"", trace=TraceContext(b"t" * 16, b"s" * 8, flags=-1)),
        Request(1, KEY, b"", trace=TraceContext(b"t" * 16, b"s" * 8, tracestate="x" * 0x10000)),
        Request(1, KEY, b"", metadata=(("k" * 0x10000, "v"),)),
        Request(1, KEY, b"", metadata=(("k", "v"),) * 0x10000),
        Request(1, KEY, b"", caller="c" * 0x10000),
        Request(-1, KEY, b""),
        Request(MAX_U64 + 1, KEY, b""),
        Request(MAX_U64 + 1, KEY, b"", caller="me"),
        Request(1, KEY, b"", caller="\udcff"),
        Request(1, KEY, b"", metadata=(("\ud800", "v"),)),
        Response(-1, b""),
        Response(MAX_U64 + 1, b""),
        Error(MAX_U64 + 1, "unknown"),
        Error(1, "unknown", message="\ud800"),
        Cancel(-1),
        Ping(MAX_U64 + 1),
        Pong(-1),
        GoAway("\udcff"),
        Hello(0, 1, 100),
        Hello(2, 1, 100),
        Hello(1, 0x10000, 100),
        Hello(1, 1, 0),
        Hello(1, 1, MAX_U32 + 1),
        HelloReply(-1, 100),
        HelloReply(0x10000, 100),
        HelloReply(1, 0),
        HelloReply(1, MAX_U32 + 1),
    ],
    ids=repr,
)
def test_encoder_rejects_bad_fields(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(frame)


def test_request_header_rejects_body_over_u32() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request_header(1, KEY, MAX_U32)
    with pytest.raises(LocalProtocolError):
        encode_request_header(1, KEY, MAX_U32, caller="me")
    with pytest.raises(LocalProtocolError):
        encode_response_header(1, MAX_U32 + 1)
    with pytest.raises(LocalProtocolError):
        encode_response_header(-1, 0)


def test_encode_non_frame() -> None:
    with pytest.raises(TypeError):
        encode_frame("ping")  # type: ignore[arg-type]


# -- buffering -----------------------------------------------------------------


def test_big_frame_in_one_byte_pieces() -> None:
    frame = Request(9, KEY, bytes(range(256)) * 600, deadline_us=5, caller="x", metadata=(("a", "b"),))
    data = encode_frame(frame)
    decoder = FrameDecoder()
    view = memoryview(data)
    for i in range(len(data) - 1):
        decoder.receive_data(view[i : i + 1])
        assert decoder.next_frame() is None
    assert decoder.buffered == len(data) - 1
    decoder.receive_data(view[-1:])
    assert decoder.next_frame() == frame
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def test_many_frames_in_odd_pieces_across_compaction() -> None:
    """Well over 64 KiB consumed while a partial frame is buffered: compaction must keep the tail."""
    frame_list = [Response(i, bytes([i % 256]) * (300 + i)) for i in range(400)]
    data = b"".join(encode_frame(f) for f in frame_list)
    decoder = FrameDecoder()
    out: list[Frame] = []
    for i in range(0, len(data), 997):
        decoder.receive_data(data[i : i + 997])
        out += drain(decoder)
    assert out == frame_list
    assert decoder.buffered == 0


def test_buffered() -> None:
    decoder = FrameDecoder()
    assert decoder.buffered == 0
    ping, response = encode_frame(Ping(1)), encode_frame(Response(2, b"abc"))
    decoder.receive_data(ping + response[:5])
    assert decoder.buffered == len(ping) + 5
    assert decoder.next_frame() == Ping(1)
    assert decoder.buffered == 5
    assert decoder.next_frame() is None
    assert decoder.buffered == 5
    decoder.receive_data(response[5:])
    assert decoder.buffered == len(response)
    assert decoder.next_frame() == Response(2, b"abc")
    assert decoder.buffered == 0
    decoder.receive_data(b"")
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def test_buffered_during_handshake() -> None:
    decoder = FrameDecoder(expect="hello")
    hello = encode_hello(Hello(1, 1, 100))
    decoder.receive_data(hello + encode_frame(Ping(3)))
    assert decoder.buffered == HELLO_SIZE + HEADER_SIZE
    assert decoder.next_frame() == Hello(1, 1, 100)
    assert decoder.buffered == HEADER_SIZE
    assert decoder.next_frame() == Ping(3)
    assert decoder.buffered == 0


def test_decoder_accepts_bytearray_and_memoryview() -> None:
    data = encode_frame(Response(1, b"xyz"))
    decoder = FrameDecoder()
    decoder.receive_data(bytearray(data[:4]))
    decoder.receive_data(memoryview(data)[4:])
    frame = decoder.next_frame()
    assert frame == Response(1, b"xyz")
    assert type(frame.payload) is bytes  # type: ignore[union-attr]


def test_decoded_payload_does_not_alias_the_buffer() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(Response(1, b"abc")))
    frame = decoder.next_frame()
    decoder.receive_data(encode_frame(Response(2, b"zzz")))  # may reuse the buffer
    assert frame == Response(1, b"abc")
    assert decoder.next_frame() == Response(2, b"zzz")


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 1000, 65535, 65536, 300_000]), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=30),
)
def test_large_bodies_arrive_whole_in_any_pieces(sizes: list[int], cuts: list[int]) -> None:
    frames: list[Frame] = []
    for i, size in enumerate(sizes, 1):
        payload = bytes([i % 251]) * size
        frames.append(Response(i, payload) if i % 2 else Request(i, b"k" * 16, payload, deadline_us=5))
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder(max_frame_size=1 << 20)
    got: list[Frame] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        decoder.receive_data(stream[pos : pos + cut])
        pos += cut
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
        if pos >= len(stream):
            break
    assert got == frames
    assert decoder.buffered == 0


def test_accept_is_a_codec_id() -> None:
    """Found by fuzzing: an accept byte beyond the 15 codec ids was decoded, and could not be encoded again."""
    body = request_body(0x20, bytes((16,))) + b"\x90"
    with pytest.raises(RemoteProtocolError, match="accepts codec 16"):
        decode_all(raw_frame(1, 1, body))
    assert decode_one(raw_frame(1, 1, request_body(0x20, bytes((3,))) + b"\x90")).accept == 3  # type: ignore[union-attr]
