"""The callrt wire protocol, sans-IO: frames as values, bytes in and bytes out.

Theory of operation
-------------------
Nothing here touches a socket, a clock or an event loop, so both transports
(the asyncio Protocol fast path and the anyio stream path) share it, and it
can be fuzzed and table-tested as plain functions. ``docs/protocol.md`` is the
byte-by-byte description; this module is its executable form.

A connection opens with a 12-byte *hello* from the client (magic ``CLRT``, the
range of protocol versions it speaks, the largest frame body it accepts) and a
12-byte *hello reply* from the server (magic, the version chosen, its own
maximum). Version 0 in the reply means "no common version" and the server
closes. The chosen version selects the layout of request headers on both sides
(:class:`FrameDecoder` takes it), so the version is used, not only exchanged.

After the hello every message is a frame: a 13-byte header (body length u32,
kind u8, id u64; little-endian) and a body. Requests are multiplexed by id on
one connection; responses, errors and cancels refer to a request's id. The
body length is checked against the receiver's maximum *before* anything is
buffered for it, so a peer cannot make us allocate from a length it chose.

Version 3 adds streams (ITEM, END and CREDIT frames on a request's id: items
each way within the credit the receiver granted) and compression (the server's
SETTINGS after its hello reply list its codecs; a codec id in the kind byte's
high bits marks a compressed payload, which the decoder hands on as
:class:`Compressed` for the connection to decompress within its limit).

The decoder raises :class:`~callrt.errors.RemoteProtocolError` for anything
that is not valid protocol and never anything else; after that the connection
must be closed, since framing is lost. The encoder raises
:class:`~callrt.errors.LocalProtocolError` for frames that would break the
protocol (a frame over the peer's maximum, a field out of range).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import msgspec

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = (
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "HELLO_SIZE",
    "REFUSED_BUSY",
    "MAGIC",
    "MAX_METADATA_ENTRIES",
    "MAX_REQUEST_HEADER_SIZE",
    "PROTOCOL_VERSION",
    "STREAM_VERSION",
    "SUPPORTED_VERSIONS",
    "Cancel",
    "Compressed",
    "Credit",
    "End",
    "Error",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "GoAway",
    "Hello",
    "HelloReply",
    "Item",
    "Ping",
    "Pong",
    "Request",
    "Response",
    "Settings",
    "TraceContext",
    "choose_version",
    "decode_hello",
    "decode_hello_reply",
    "encode_frame",
    "encode_hello",
    "encode_hello_reply",
    "encode_plain_request_header",
    "encode_request_header",
    "encode_response_header",
    "pack_frame_header",
)

MAGIC: Final = b"CLRT"
PROTOCOL_VERSION: Final = 3
# Version 2 is version 1 plus an optional fifth element in ERROR bodies (a declared exception's args);
# version 3 is version 2 plus streams (ITEM, END and CREDIT frames) and compression (SETTINGS frames,
# a codec in a frame's kind byte, and the request header's accept field).
SUPPORTED_VERSIONS: Final = range(1, 4)
#: The first version with streams: a stream method's call needs a connection of at least this one.
STREAM_VERSION: Final = 3
DEFAULT_MAX_FRAME_SIZE: Final = 64 << 20  # 64 MiB of body
#: The most metadata entries a request may carry: a receiver's default limit, a sender's hard one.
MAX_METADATA_ENTRIES: Final = 64
#: The largest request header (method key to the payload's first byte): the same, in bytes.
MAX_REQUEST_HEADER_SIZE: Final = 64 << 10

_HELLO = struct.Struct("<4sHHI")
_HEADER = struct.Struct("<IBQ")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_TRACE = struct.Struct("<16s8sBH")
_CREDIT = struct.Struct("<II")  # items, bytes
_PLAIN_REQUEST = struct.Struct("<IBQ16sB")  # frame header, method key, no flags
_DEADLINE_REQUEST = struct.Struct("<IBQ16sBQ")  # frame header, method key, _F_DEADLINE, deadline
# ... and a trace context with no tracestate (the ids, flags and a zero length), with or without a deadline.
_TRACED_REQUEST = struct.Struct("<IBQ16sB16s8sBH")
_DEADLINE_TRACED_REQUEST = struct.Struct("<IBQ16sBQ16s8sBH")
_REQUEST_HEAD = struct.Struct("<16sBQ")  # a request body's method key, flags and (if flagged) deadline
HELLO_SIZE: Final = _HELLO.size  # 12
HEADER_SIZE: Final = _HEADER.size  # 13
_MAX_U32: Final = (1 << 32) - 1
_LARGE_BODY: Final = 64 << 10  # bodies this large that span reads are collected apart (see FrameDecoder._keep)
_SMALL_READ: Final = 4096  # a large body's reads shorter than this are merged, so tiny reads cost no more memory
_MAX_U64: Final = (1 << 64) - 1


class FrameKind(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    ERROR = 3
    CANCEL = 4
    PING = 5
    PONG = 6
    GOAWAY = 7
    ITEM = 8  # version 3
    END = 9  # version 3
    CREDIT = 10  # version 3
    SETTINGS = 11  # version 3


_LAST_KIND = {1: 7, 2: 7, 3: 11}  # the last frame kind of each version
# In version 3 the kind byte's high four bits are a compression codec's id (callrt.compression) for
# REQUEST, RESPONSE and ITEM frames: their payload is compressed. Zero, and for every other kind: none.
_CODEC_SHIFT: Final = 4
_COMPRESSIBLE: Final = frozenset({1, 2, 8})

# Request header flags: which optional fields follow the method key, in this order.
_F_DEADLINE: Final = 0x01
_F_TRACE: Final = 0x02
_F_METADATA: Final = 0x04
_F_CALLER: Final = 0x08
_F_SHARD: Final = 0x10
_F_ACCEPT: Final = 0x20  # version 3: one byte, the codec the caller accepts its reply (and items) in
_F_KNOWN: Final = 0x1F  # versions 1 and 2
_F_KNOWN_V3: Final = 0x3F


class TraceContext(msgspec.Struct, frozen=True, gc=False):
    """W3C trace context: 16-byte trace id, 8-byte parent span id, flags, tracestate."""

    trace_id: bytes
    span_id: bytes
    flags: int = 0
    tracestate: str = ""


class Hello(msgspec.Struct, frozen=True, gc=False):
    """The client's opening: the versions it speaks and the largest body it accepts."""

    min_version: int
    max_version: int
    max_frame_size: int


class HelloReply(msgspec.Struct, frozen=True, gc=False):
    """The server's answer: the chosen version (0: none in common) and its maximum body.

    ``refused`` is :data:`REFUSED_BUSY` (with version 0) when the server turns the
    connection away because it serves as many as it may; the client backs off.
    """

    version: int
    max_frame_size: int
    refused: int = 0


#: ``HelloReply.refused``: the server is at its connection limit.
REFUSED_BUSY: Final = 1


class Request(msgspec.Struct, frozen=True, gc=False):
    """A call. ``deadline_us`` is the time the caller has left, in microseconds."""

    id: int
    method_key: bytes
    payload: bytes
    deadline_us: int | None = None
    trace: TraceContext | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    caller: str = ""
    shard_key: int | None = None
    accept: int = 0  # version 3: the codec id the caller accepts its reply in (0: uncompressed)


class Response(msgspec.Struct, frozen=True, gc=False):
    """A successful result for request ``id``. A large payload arrives as the bytearray it was received into."""

    id: int
    payload: bytes | bytearray


class Error(msgspec.Struct, frozen=True, gc=False):
    """A failed result for request ``id``; ``code`` is an ErrorCode value.

    ``args`` (protocol version 2; a sender leaves it None on a version 1
    connection) is the MessagePack encoding of the ``args`` of an exception
    its component declared, for the caller to rebuild it.
    """

    id: int
    code: str
    remote_type: str = ""
    message: str = ""
    traceback: str = ""
    args: bytes | None = None


class Item(msgspec.Struct, frozen=True, gc=False):
    """One item of stream ``id`` (version 3): server to client, or client to server for a method taking items."""

    id: int
    payload: bytes | bytearray


class End(msgspec.Struct, frozen=True, gc=False):
    """The client sent the last item of stream ``id`` (version 3); or, with an ``error``, could not send more.

    ``error`` (UTF-8, empty for a normal end) says why the caller's items stopped: its
    iterable raised. The server's handler then gets that error after the items before it.
    """

    id: int
    error: str = ""


class Credit(msgspec.Struct, frozen=True, gc=False):
    """The receiver of stream ``id``'s items lets the sender send ``items`` more, or ``size`` more bytes (version 3).

    Credit adds up. A sender may send an item while it has an item and a byte of credit left;
    the item's size is then taken from the bytes, which may go below zero by that one item.
    """

    id: int
    items: int
    size: int


class Settings(msgspec.Struct, frozen=True, gc=False):
    """What the server offers (version 3), sent once, right after its hello reply.

    ``codecs``: the compression codecs it decompresses, by name (``callrt.compression``).
    The body is a MessagePack map; a receiver ignores keys it does not know.
    """

    codecs: tuple[str, ...] = ()


class Compressed(msgspec.Struct, frozen=True, gc=False):
    """A REQUEST, RESPONSE or ITEM whose payload ``codec`` compressed (version 3), as received.

    The decoder does not decompress: whoever handles the frame does, so that a payload that
    does not decompress within its limit fails that call, not the connection.
    """

    frame: Request | Response | Item
    codec: int


class Cancel(msgspec.Struct, frozen=True, gc=False):
    """The caller gave up on request ``id``; the server cancels its handler."""

    id: int


class Ping(msgspec.Struct, frozen=True, gc=False):
    """Liveness probe; the peer answers with a Pong carrying the same id."""

    id: int


class Pong(msgspec.Struct, frozen=True, gc=False):
    id: int


class GoAway(msgspec.Struct, frozen=True, gc=False):
    """The server is draining: send no new calls here; in-flight calls will finish."""

    reason: str = ""


Frame: TypeAlias = (
    Hello
    | HelloReply
    | Request
    | Response
    | Error
    | Cancel
    | Ping
    | Pong
    | GoAway
    | Item
    | End
    | Credit
    | Settings
    | Compressed
)


class _ErrorBody(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    code: str
    remote_type: str
    message: str
    traceback: str
    args: bytes | None = None  # version 2 only


_msgpack = msgspec.msgpack.Encoder()  # error and settings bodies
_error_body_decoder = msgspec.msgpack.Decoder(_ErrorBody)
_settings_decoder = msgspec.msgpack.Decoder(dict[str, Any])


# -- handshake ---------------------------------------------------------------


def encode_hello(hello: Hello) -> bytes:
    _check(0 < hello.min_version <= hello.max_version <= 0xFFFF, "bad version range")
    _check(0 < hello.max_frame_size <= _MAX_U32, "bad max_frame_size")
    return _HELLO.pack(MAGIC, hello.min_version, hello.max_version, hello.max_frame_size)


def encode_hello_reply(reply: HelloReply) -> bytes:
    _check(0 <= reply.version <= 0xFFFF, "bad version")
    _check(0 < reply.max_frame_size <= _MAX_U32, "bad max_frame_size")
    _check(reply.refused in (0, REFUSED_BUSY) and not (reply.refused and reply.version), "bad refusal")
    return _HELLO.pack(MAGIC, reply.version, reply.refused, reply.max_frame_size)


def decode_hello(data: bytes) -> Hello:
    """Parse the client's 12-byte hello; a wrong magic or range is a RemoteProtocolError."""
    _, lo, hi, max_frame = _unpack_hello(data)
    if lo == 0 or lo > hi or max_frame == 0:
        raise RemoteProtocolError(f"invalid hello: versions {lo}..{hi}, max frame {max_frame}")
    return Hello(lo, hi, max_frame)


def decode_hello_reply(data: bytes) -> HelloReply:
    _, version, refused, max_frame = _unpack_hello(data)
    if refused not in (0, REFUSED_BUSY) or (refused and version) or max_frame == 0:
        raise RemoteProtocolError("invalid hello reply")
    return HelloReply(version, max_frame, refused)


def _unpack_hello(data: bytes) -> tuple[bytes, int, int, int]:
    if len(data) != HELLO_SIZE:
        raise RemoteProtocolError(f"hello must be {HELLO_SIZE} bytes, got {len(data)}")
    fields: tuple[bytes, int, int, int] = _HELLO.unpack(data)
    if fields[0] != MAGIC:
        raise RemoteProtocolError(f"wrong magic {fields[0]!r}: not a callrt peer")
    return fields


def choose_version(hello: Hello) -> int:
    """The highest version both sides speak, or 0 when there is none."""
    best = min(hello.max_version, SUPPORTED_VERSIONS[-1])
    return best if best >= max(hello.min_version, SUPPORTED_VERSIONS[0]) else 0


# -- encoding ----------------------------------------------------------------


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise LocalProtocolError(what)


def encode_request_header(
    request_id: int,
    method_key: bytes,
    payload_size: int,
    deadline_us: int | None = None,
    trace: TraceContext | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    caller: str = "",
    shard_key: int | None = None,
    accept: int = 0,
    codec: int = 0,
) -> bytes:
    """Everything of a request frame but its payload, which the caller writes after it.

    Keeping the payload out lets the transport send a large payload without
    copying it into the header's buffer (write flattening decides). ``accept`` and
    ``codec`` (version 3) are the codec the reply may use and the one the payload uses.
    """
    try:
        _check(len(method_key) == 16, "method key must be 16 bytes")
        _check(0 <= codec <= 15 and 0 <= accept <= 15, "codec id out of range")
        kind = 1 | codec << _CODEC_SHIFT
        if (
            deadline_us is None
            and trace is None
            and not metadata
            and not caller
            and shard_key is None
            and not accept
            and not codec
        ):
            # The common case, kept short: no optional fields.
            return _HEADER.pack(17 + payload_size, 1, request_id) + method_key + b"\x00"
        flags = 0
        parts = [method_key, b""]
        if deadline_us is not None:
            _check(0 <= deadline_us <= _MAX_U64, "deadline out of range")
            flags |= _F_DEADLINE
            parts.append(_U64.pack(deadline_us))
        if trace is not None:
            state = trace.tracestate.encode()
            _check(len(trace.trace_id) == 16 and len(trace.span_id) == 8, "bad trace ids")
            _check(0 <= trace.flags <= 0xFF and len(state) <= 0xFFFF, "bad trace flags or tracestate")
            flags |= _F_TRACE
            parts.append(_TRACE.pack(trace.trace_id, trace.span_id, trace.flags, len(state)))
            parts.append(state)
        if metadata:
            _check(len(metadata) <= MAX_METADATA_ENTRIES, f"more than {MAX_METADATA_ENTRIES} metadata entries")
            flags |= _F_METADATA
            parts.append(_U16.pack(len(metadata)))
            for key, value in metadata:
                k, v = key.encode(), value.encode()
                _check(len(k) <= 0xFFFF, "metadata key too long")
                parts += (_U16.pack(len(k)), k, _U32.pack(len(v)), v)
        if caller:
            c = caller.encode()
            _check(len(c) <= 0xFFFF, "caller name too long")
            flags |= _F_CALLER
            parts += (_U16.pack(len(c)), c)
        if shard_key is not None:
            _check(0 <= shard_key <= _MAX_U64, "shard key out of range")
            flags |= _F_SHARD
            parts.append(_U64.pack(shard_key))
        if accept:
            flags |= _F_ACCEPT
            parts.append(bytes((accept,)))
        parts[1] = bytes((flags,))
        body = b"".join(parts)
        _check(len(body) <= MAX_REQUEST_HEADER_SIZE, f"request header over {MAX_REQUEST_HEADER_SIZE} bytes")
        return _HEADER.pack(len(body) + payload_size, kind, request_id) + body
    except struct.error as exc:  # request id or total length beyond the header's fields
        raise LocalProtocolError(f"request field out of range: {exc}") from None
    except UnicodeEncodeError as exc:  # a str with lone surrogates
        raise LocalProtocolError(f"request has a string that is not UTF-8: {exc}") from None


def encode_plain_request_header(
    request_id: int,
    method_key: bytes,
    payload_size: int,
    deadline_us: int | None = None,
    trace: TraceContext | None = None,
) -> bytes:
    """:func:`encode_request_header` for the common call, with no optional field but a deadline and a trace
    context: one ``pack``.

    ``method_key`` must be 16 bytes (a :func:`~callrt.keys.make_method_key` result); it is not checked here.
    A trace context with a tracestate, or ids of other lengths, takes the general path (which checks them).
    """
    try:
        if trace is None:
            if deadline_us is None:
                return _PLAIN_REQUEST.pack(17 + payload_size, 1, request_id, method_key, 0)
            return _DEADLINE_REQUEST.pack(25 + payload_size, 1, request_id, method_key, _F_DEADLINE, deadline_us)
        # A traced call, as every call is once an SDK makes spans: the general path cost ~200 bytecodes.
        if trace.tracestate or len(trace.trace_id) != 16 or len(trace.span_id) != 8:
            return encode_request_header(request_id, method_key, payload_size, deadline_us, trace)
        if deadline_us is None:
            return _TRACED_REQUEST.pack(
                44 + payload_size, 1, request_id, method_key, _F_TRACE, trace.trace_id, trace.span_id, trace.flags, 0
            )
        return _DEADLINE_TRACED_REQUEST.pack(
            52 + payload_size,
            1,
            request_id,
            method_key,
            _F_DEADLINE | _F_TRACE,
            deadline_us,
            trace.trace_id,
            trace.span_id,
            trace.flags,
            0,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"request field out of range: {exc}") from None


#: ``pack_frame_header(body_size, kind, frame_id)``: the 13-byte header, packed with no
#: range check (struct.error instead of LocalProtocolError), for callers whose sizes are
#: already bounded, such as a reply checked against the peer's maximum frame.
pack_frame_header: Callable[[int, int, int], bytes] = _HEADER.pack


def encode_response_header(request_id: int, payload_size: int) -> bytes:
    try:
        return _HEADER.pack(payload_size, 2, request_id)
    except struct.error as exc:
        raise LocalProtocolError(f"response field out of range: {exc}") from None


def encode_frame(frame: Frame) -> bytes:
    """The bytes of ``frame``, header included."""
    try:
        return _encode_frame(frame)
    except struct.error as exc:  # an id or length beyond the header's fields
        raise LocalProtocolError(f"{type(frame).__name__} field out of range: {exc}") from None
    except UnicodeEncodeError as exc:  # a str with lone surrogates
        raise LocalProtocolError(f"{type(frame).__name__} has a string that is not UTF-8: {exc}") from None


def _encode_frame(frame: Frame) -> bytes:
    if type(frame) is Request:
        return (
            encode_request_header(
                frame.id,
                frame.method_key,
                len(frame.payload),
                frame.deadline_us,
                frame.trace,
                frame.metadata,
                frame.caller,
                frame.shard_key,
                frame.accept,
            )
            + frame.payload
        )
    if type(frame) is Response:
        return _HEADER.pack(len(frame.payload), 2, frame.id) + frame.payload
    if type(frame) is Error:
        if frame.args is None:
            body = _msgpack.encode((frame.code, frame.remote_type, frame.message, frame.traceback))
        else:
            body = _msgpack.encode((frame.code, frame.remote_type, frame.message, frame.traceback, frame.args))
        return _HEADER.pack(len(body), 3, frame.id) + body
    if type(frame) is Cancel:
        return _HEADER.pack(0, 4, frame.id)
    if type(frame) is Ping:
        return _HEADER.pack(0, 5, frame.id)
    if type(frame) is Pong:
        return _HEADER.pack(0, 6, frame.id)
    if type(frame) is GoAway:
        reason = frame.reason.encode()
        return _HEADER.pack(len(reason), 7, 0) + reason
    if type(frame) is Item:
        return _HEADER.pack(len(frame.payload), 8, frame.id) + frame.payload
    if type(frame) is End:
        error = frame.error.encode()
        return _HEADER.pack(len(error), 9, frame.id) + error
    if type(frame) is Credit:
        return _HEADER.pack(8, 10, frame.id) + _CREDIT.pack(frame.items, frame.size)
    if type(frame) is Settings:
        body = _msgpack.encode({"codecs": list(frame.codecs)})
        return _HEADER.pack(len(body), 11, 0) + body
    if type(frame) is Compressed:
        inner = _encode_frame(frame.frame)
        _check(0 < frame.codec <= 15, "codec id out of range")
        return inner[:4] + bytes((inner[4] | frame.codec << _CODEC_SHIFT,)) + inner[5:]
    if type(frame) is Hello:
        return encode_hello(frame)
    if type(frame) is HelloReply:
        return encode_hello_reply(frame)
    raise TypeError(f"not a frame: {frame!r}")


# -- decoding ----------------------------------------------------------------


class FrameDecoder:
    """Incremental frame parser: feed bytes with :meth:`receive_data`, take frames with :meth:`frames` or :meth:`next_frame`.

    :param max_frame_size: the largest body accepted; a header announcing more is
        a :class:`RemoteProtocolError` before any of the body is buffered.
    :param expect: ``"hello"`` (server side), ``"hello_reply"`` (client side) or
        ``None`` when the handshake is done elsewhere.
    :param version: the negotiated protocol version; set from the hello when
        ``expect`` is given.
    :param max_metadata_entries: the most metadata entries a request may carry;
        a count above it is a :class:`RemoteProtocolError` before any entry is
        parsed.
    :param max_request_header_size: the largest request header (from the
        method key to the payload); a field reaching past it is a
        :class:`RemoteProtocolError` before the field is decoded.

    Memory: a header announcing a large body costs nothing until the body
    comes, unless this peer already delivered a body at least that large (then
    its buffer is allocated at once, as a well-behaved peer's next large body
    is the common case; its size was paid for in bytes received). Otherwise a
    large body that spans reads is kept as the reads it arrives in until half
    of it is here, then in one buffer of its size: what is allocated never
    exceeds twice what was received. :attr:`partial_body_bytes` says how much
    memory an incomplete body holds.
    """

    __slots__ = (
        "_buf",
        "_error",
        "_expect",
        "_large",
        "_large_head",
        "_large_held",
        "_pos",
        "_proven",
        "max_frame_size",
        "max_metadata_entries",
        "max_request_header_size",
        "more",
        "version",
    )

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        *,
        expect: str | None = None,
        version: int = PROTOCOL_VERSION,
        max_metadata_entries: int = MAX_METADATA_ENTRIES,
        max_request_header_size: int = MAX_REQUEST_HEADER_SIZE,
    ) -> None:
        if expect not in (None, "hello", "hello_reply"):
            raise ValueError(f"expect must be None, 'hello' or 'hello_reply', not {expect!r}")
        self.max_frame_size = max_frame_size
        self.max_metadata_entries = max_metadata_entries
        self.max_request_header_size = max_request_header_size
        self.version = version
        self._expect = expect
        # Unparsed bytes start at _pos. When everything before a read was parsed, the read's
        # own bytes object becomes the buffer (a frame's fields are then sliced out of it with
        # one copy); only a partial frame left over makes a bytearray to append to.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        # A large body (one that does not fit the read its header came in) is collected as its
        # bytes arrive, never allocated from the header's length, which the peer chose: a list
        # of reads until half of it is here, then a bytearray of its size (see _keep).
        self._large: list[bytes | bytearray] | bytearray | None = None
        self._large_head: tuple[int, int, int] = (0, 0, 0)  # kind, id, body size
        self._large_held = 0  # bytes of the large body received so far
        self._proven = 0  # the largest body this peer delivered in pieces: allocated ahead up to this
        self._error: RemoteProtocolError | None = None  # the stream is broken: raised by every later call
        self.more = False  # frames() stopped early: call it again once its frames are handled

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        pending_large = 0 if self._large is None else HEADER_SIZE + self._large_held
        return len(self._buf) - self._pos + pending_large

    @property
    def partial_body_bytes(self) -> int:
        """Memory held for a frame body whose header has arrived but whose end has not.

        The bytes received of it, or its whole size once its buffer is allocated
        (see the class docstring). Meant for a server-wide budget of partly
        received bodies and for a body timeout (nonzero for too long: the peer is
        trickling). O(1). Exact once the decoder has returned every complete frame
        (:meth:`next_frame` returned ``None``, or :meth:`frames` returned with
        :attr:`more` false); before that it may also count frames received whole
        but not yet taken.
        """
        large = self._large
        if large is not None:
            return len(large) if type(large) is bytearray else self._large_held
        held = len(self._buf) - self._pos - HEADER_SIZE
        return max(0, held)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        large = self._large
        if large is not None:
            n = self._large_head[2] - self._large_held
            if len(data) <= n:
                self._keep(data)
                return
            with memoryview(data) as view:
                self._keep(view[:n])
                data = bytes(view[n:])
        buf, pos = self._buf, self._pos
        if pos == len(buf):
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif type(buf) is bytes or (pos > 65536 and pos > len(buf) // 2):
            self._buf = bytearray(memoryview(buf)[pos:])
            self._buf += data
            self._pos = 0
        else:
            buf += data  # a bytearray, extended in place

    def frames(self) -> list[Frame]:
        """Every complete frame received so far, in order; ``[]`` when more bytes are needed.

        Equivalent to calling :meth:`next_frame` until it returns ``None``, but
        one call per read instead of one per frame. When a malformed frame
        follows good ones, the good ones are returned and the next call raises,
        so the frames before the error can still be handled. A large frame is
        returned alone, so that it is handled before the next large body is
        allocated. :attr:`more` tells whether a call right after this one may
        return (or raise) anything: handle these frames, then call again.
        """
        if self._error is not None:
            raise self._error
        out: list[Frame] = []
        if self._expect is None and self._large is None:
            # The steady state, inlined: complete frames of known kinds within the size limit.
            buf, pos = self._buf, self._pos
            end_of_data = len(buf)
            copy = type(buf) is not bytes  # a bytearray's slices must become bytes
            limit = self.max_frame_size
            plain_requests = self.version <= 3  # versions 1 to 3 share the request layout
            last_kind = _LAST_KIND.get(self.version, 7)
            while end_of_data - pos >= HEADER_SIZE:
                size, kind, ident = _HEADER.unpack_from(buf, pos)
                start = pos + HEADER_SIZE
                end = start + size
                if end > end_of_data or size > limit:
                    break  # incomplete, or too large: next_frame() waits, or reports it
                if kind == 2:
                    out.append(Response(ident, bytes(buf[start:end]) if copy else buf[start:end]))
                elif kind == 1 and plain_requests and size >= 25 and not copy and buf[start + 16] <= _F_DEADLINE:
                    # No optional field but perhaps a deadline: key, flags and the deadline field's
                    # 8 bytes in one unpack (without a deadline they are the payload's first 8).
                    key, flags, deadline_us = _REQUEST_HEAD.unpack_from(buf, start)
                    if flags:
                        out.append(Request(ident, key, buf[start + 25 : end], deadline_us))  # type: ignore[arg-type]
                    else:
                        out.append(Request(ident, key, buf[start + 17 : end]))  # type: ignore[arg-type]
                elif kind == 1 and plain_requests and size >= 17 and not copy and buf[start + 16] == 0:
                    # The same, with a payload shorter than a deadline field (no arguments, say).
                    out.append(Request(ident, buf[start : start + 16], buf[start + 17 : end]))  # type: ignore[arg-type]
                elif kind == 8 and last_kind >= 10:
                    out.append(Item(ident, bytes(buf[start:end]) if copy else buf[start:end]))
                elif kind > last_kind or kind == 0:
                    break  # unknown: next_frame() reports it
                else:
                    self._pos = end
                    try:
                        out.append(self._frame(kind, ident, buf, start, end))
                    except RemoteProtocolError as exc:
                        self._error = exc
                        break
                pos = end
            else:
                self._pos = pos
                self.more = False
                return out
            if self._error is None:
                self._pos = pos
        self.more = False
        try:
            while self._error is None:
                large = self._large is not None
                if (frame := self._next_frame()) is None:
                    break
                out.append(frame)
                if large:
                    # A large frame is handled before the next one is parsed (whose body would be
                    # collected meanwhile): one large buffer alive at a time, as with next_frame().
                    self.more = True
                    break
        except RemoteProtocolError as exc:
            self._error = exc
        if self._error is not None:
            if not out:
                raise self._error
            self.more = True  # the next call raises it
        return out

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` when more bytes are needed.

        A :class:`RemoteProtocolError` is final: every later call raises it again
        (the frame after a malformed one is never decoded; framing is lost).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _next_frame(self) -> Frame | None:
        if self._expect is not None or self._large is not None:
            return self._hello() if self._expect is not None else self._large_frame()
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        size, kind, ident = _HEADER.unpack_from(buf, pos)
        start = pos + HEADER_SIZE
        end = start + size
        if size > self.max_frame_size:
            raise RemoteProtocolError(f"frame body of {size} bytes exceeds the maximum of {self.max_frame_size}")
        base = kind & 0x0F
        if base == 0 or base > 11 or (kind > 0x0F and (base not in _COMPRESSIBLE or self.version < 3)):
            raise RemoteProtocolError(f"unknown frame kind {kind}")
        if base > _LAST_KIND.get(self.version, 7):
            raise RemoteProtocolError(f"{FrameKind(base).name} frames need protocol version 3, not {self.version}")
        if len(buf) < end:
            if size >= _LARGE_BODY and base in _COMPRESSIBLE:
                # Nothing from the header's length alone, unless this peer already delivered a
                # body this large: then its buffer at once (see _keep).
                self._large_held, self._large_head = 0, (kind, ident, size)
                self._large = bytearray(size) if size <= self._proven else []
                with memoryview(buf) as view:
                    self._keep(view[start:])
                self._buf, self._pos = b"", 0
            return None
        self._pos = end
        if kind > 0x0F:
            return Compressed(self._frame(base, ident, buf, start, end), kind >> _CODEC_SHIFT)  # type: ignore[arg-type]
        return self._frame(kind, ident, buf, start, end)

    def _hello(self) -> Hello | HelloReply | None:
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < HELLO_SIZE:
            # A wrong magic is reported as soon as it can be seen, not after 12 bytes.
            if avail and bytes(buf[pos : pos + min(avail, 4)]) != MAGIC[: min(avail, 4)]:
                raise RemoteProtocolError("wrong magic: not a callrt peer")
            return None
        raw = bytes(buf[pos : pos + HELLO_SIZE])
        self._pos = pos + HELLO_SIZE
        hello: Hello | HelloReply
        if self._expect == "hello":
            hello = decode_hello(raw)
            self.version = choose_version(hello) or self.version
        else:
            hello = decode_hello_reply(raw)
            if hello.version:
                if hello.version not in SUPPORTED_VERSIONS:
                    raise RemoteProtocolError(f"server chose unsupported version {hello.version}")
                self.version = hello.version
        self._expect = None
        return hello

    def _keep(self, piece: bytes | bytearray | memoryview) -> None:
        """Add ``piece`` to the large body being received.

        A body no larger than one this peer already delivered has its buffer from the
        start (allocated when its header came). Any other is kept as the reads it came in
        (a ``bytes`` by reference, others copied, short ones merged) until half of it is
        here, then moved to a buffer of its size: allocated memory is at most twice what
        was received, and a header alone costs nothing.

        Why the buffer at once for a proven size: on the bench (1 MiB echo, 64 in
        flight, uvloop), collecting every body as its reads (joined at the end, or
        appended to a growing bytearray) kept more memory alive per call, and glibc
        trimmed and re-grew its heap around it: ~3x the brk calls, ~850 page faults
        per call instead of ~300, +40% server CPU per call. Allocating at the header
        for a proven size measured ~20 faults per call and the old code's CPU or less.
        """
        n = len(piece)
        held = self._large_held
        self._large_held = held + n
        large = self._large
        if isinstance(large, bytearray):
            large[held : held + n] = piece
            return
        assert large is not None
        if n >= _SMALL_READ:
            large.append(piece if type(piece) is bytes else bytes(piece))
        elif large and type(last := large[-1]) is bytearray and len(last) < _LARGE_BODY:
            last += piece
        elif n:
            large.append(bytearray(piece))
        size = self._large_head[2]
        if 2 * (held + n) >= size:
            body = bytearray(size)
            pos = 0
            for chunk in large:
                body[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
            self._large = body

    def _large_frame(self) -> Frame | None:
        kind, ident, size = self._large_head
        if self._large_held < size:
            return None
        body = self._large
        assert type(body) is bytearray  # complete, so past half: in its own buffer
        self._large, self._large_held = None, 0
        if size > self._proven:
            self._proven = size
        frame: Request | Response | Item
        if kind & 0x0F == 2:
            frame = Response(ident, body)  # the body's own buffer, handed over as it is
        elif kind & 0x0F == 8:
            frame = Item(ident, body)
        else:
            frame = self._request(ident, body, 0, size)
        return frame if kind <= 0x0F else Compressed(frame, kind >> _CODEC_SHIFT)

    def _frame(self, kind: int, ident: int, buf: bytes | bytearray, start: int, end: int) -> Frame:
        """The frame of ``kind`` whose body is ``buf[start:end]``."""
        size = end - start
        if kind == 1:
            return self._request(ident, buf, start, end)
        if kind == 2:
            return Response(ident, _copy(buf, start, end))
        if kind == 3:
            try:
                body = _error_body_decoder.decode(buf[start:end])
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise RemoteProtocolError(f"malformed error body: {exc}") from None
            if body.args is not None and self.version < 2:
                raise RemoteProtocolError("malformed error body: args need protocol version 2")
            return Error(ident, body.code, body.remote_type, body.message, body.traceback, body.args)
        if kind == 7:
            if ident != 0:
                raise RemoteProtocolError("goaway frame must have id 0")
            return GoAway(_utf8(buf, start, end))
        if kind == 8:
            return Item(ident, _copy(buf, start, end))
        if kind == 9:
            return End(ident, _utf8(buf, start, end))
        if kind == 10:
            if size != _CREDIT.size:
                raise RemoteProtocolError(f"CREDIT frame must have an {_CREDIT.size}-byte body")
            items, credit_bytes = _CREDIT.unpack_from(buf, start)
            return Credit(ident, items, credit_bytes)
        if kind == 11:
            if ident != 0:
                raise RemoteProtocolError("settings frame must have id 0")
            try:
                fields = _settings_decoder.decode(buf[start:end])
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                raise RemoteProtocolError(f"malformed settings body: {exc}") from None
            codecs = fields.get("codecs", [])
            if not isinstance(codecs, list) or not all(isinstance(c, str) for c in codecs):
                raise RemoteProtocolError("malformed settings body: codecs must be a list of names")
            return Settings(tuple(codecs))
        if size != 0:
            raise RemoteProtocolError(f"{FrameKind(kind).name} frame must have an empty body")
        if kind == 4:
            return Cancel(ident)
        if kind == 5:
            return Ping(ident)
        return Pong(ident)

    def _request(self, ident: int, buf: bytes | bytearray, p: int, end: int) -> Request:
        if self.version > 3:  # versions 1 to 3 share this layout; a new one adds a branch here
            raise RemoteProtocolError(f"no request layout for protocol version {self.version}")
        if end - p < 17:
            raise RemoteProtocolError("request header truncated")
        key = buf[p : p + 16] if type(buf) is bytes else bytes(buf[p : p + 16])
        flags = buf[p + 16]
        p += 17
        if flags == 0:
            return Request(ident, key, buf[p:end] if type(buf) is bytes else _copy(buf, p, end))
        if flags == _F_DEADLINE and end - p >= 8:  # the next most common: a deadline only
            (deadline_us,) = _U64.unpack_from(buf, p)
            return Request(ident, key, buf[p + 8 : end] if type(buf) is bytes else _copy(buf, p + 8, end), deadline_us)
        if flags & ~(_F_KNOWN_V3 if self.version >= 3 else _F_KNOWN):
            raise RemoteProtocolError(f"unknown request flags {flags:#x}")
        deadline = trace = shard = None
        metadata: tuple[tuple[str, str], ...] = ()
        caller = ""
        # Header fields must end by here: the frame's end, or the header size limit before it.
        header_end = p - 17 + self.max_request_header_size
        if header_end > end:
            header_end = end

        def take(n: int) -> int:
            nonlocal p
            if p + n > header_end:
                if p + n > end:
                    raise RemoteProtocolError("request header overruns its frame")
                raise RemoteProtocolError(f"request header longer than {self.max_request_header_size} bytes")
            p += n
            return p - n

        if flags & _F_DEADLINE:
            (deadline,) = _U64.unpack_from(buf, take(8))
        if flags & _F_TRACE:
            trace_id, span_id, tflags, slen = _TRACE.unpack_from(buf, take(_TRACE.size))
            s = take(slen)
            trace = TraceContext(trace_id, span_id, tflags, _utf8(buf, s, p))
        if flags & _F_METADATA:
            (count,) = _U16.unpack_from(buf, take(2))
            if count > self.max_metadata_entries:
                raise RemoteProtocolError(f"{count} metadata entries, more than {self.max_metadata_entries}")
            entries = []
            for _ in range(count):
                (klen,) = _U16.unpack_from(buf, take(2))
                s = take(klen)
                k = _utf8(buf, s, p)
                (vlen,) = _U32.unpack_from(buf, take(4))
                s = take(vlen)
                entries.append((k, _utf8(buf, s, p)))
            metadata = tuple(entries)
        if flags & _F_CALLER:
            (clen,) = _U16.unpack_from(buf, take(2))
            s = take(clen)
            caller = _utf8(buf, s, p)
        if flags & _F_SHARD:
            (shard,) = _U64.unpack_from(buf, take(8))
        accept = buf[take(1)] if flags & _F_ACCEPT else 0
        if accept > 15:  # codec ids are the kind byte's four high bits
            raise RemoteProtocolError(f"request accepts codec {accept}, beyond the 15 codec ids")
        return Request(ident, key, _copy(buf, p, end), deadline, trace, metadata, caller, shard, accept)


def _copy(buf: bytes | bytearray, start: int, stop: int) -> bytes:
    """``bytes(buf[start:stop])``, copying a large slice once instead of twice."""
    if type(buf) is bytes:
        return buf[start:stop]  # one copy (none for the whole of it)
    if stop - start < 4096:
        return bytes(buf[start:stop])  # cheaper than a memoryview when the copy is small
    with memoryview(buf) as view:
        return view[start:stop].tobytes()


def _utf8(buf: bytes | bytearray, start: int, stop: int) -> str:
    try:
        return buf[start:stop].decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("string field is not UTF-8") from None
