"""The fuzz targets: plain functions of one input (``bytes``), raising on a finding.

They import nothing from atheris, so the same checks run under atheris
(coverage-guided, ``python -m fuzz``) and under Hypothesis (the CI smoke test
when atheris is not installed). Each target raises :class:`Finding` (or any
unexpected exception) for a bug, and returns normally otherwise.

``decoder_server`` / ``decoder_client``
    A :class:`~callrt.protocol.FrameDecoder` expecting a hello (server side) or
    a hello reply (client side) is fed the input in chunks whose sizes the
    input chooses, through :meth:`frames` or :meth:`next_frame`, and checked:

    - only :class:`~callrt.errors.RemoteProtocolError` ever escapes, and once
      raised it is raised by every later call (the stream is broken);
    - chunking changes nothing: the frames (and whether it ends in an error)
      are those of the same bytes fed at once;
    - every frame re-encodes consistently: ``encode_frame`` accepts it (no
      ``LocalProtocolError`` for something the decoder accepted), the bytes
      decode to an equal frame, and for the kinds with one encoding (hello,
      hello reply, response, cancel, ping, pong, goaway) they are the bytes
      received;
    - memory follows the bytes received: after every read, the decoder's
      buffers (their allocated sizes) stay within 2 x the bytes received so far
      + 1 KiB, whatever length a header announced; ``buffered`` never exceeds
      what was received, nor ``partial_body_bytes`` what is allocated.

    The first input byte picks options: prepend a valid hello (so mutations go
    deep rather than die on the magic), a small ``max_frame_size`` (and small
    request header and metadata limits), the API, and
    padding of the stream with up to 248 KiB of filler (read 4 KiB at a time),
    which carries bodies into the 64 KiB "large body" path with short inputs;
    ``FILL`` + a count byte inside the input expands to that many 4 KiB of
    filler, for several large bodies in one input.

``tracestate``
    :func:`callrt.tracing.parse_tracestate` on the input as text: never raises,
    accepts only what the W3C grammar allows (ASCII, at most 512 characters, at
    most 32 members), what it accepts round-trips through
    ``TraceState.to_header``, OpenTelemetry's own parser reads the same pairs
    from it (and nothing from what it refuses), and nothing is logged by
    OpenTelemetry.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from opentelemetry.trace import TraceState

from callrt.errors import LocalProtocolError, RemoteProtocolError
from callrt.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    Cancel,
    Credit,
    End,
    Frame,
    FrameDecoder,
    GoAway,
    Hello,
    HelloReply,
    Item,
    Ping,
    Pong,
    Response,
    decode_hello,
    decode_hello_reply,
    encode_frame,
    encode_hello,
    encode_hello_reply,
)
from callrt.tracing import MAX_TRACESTATE_LENGTH, MAX_TRACESTATE_MEMBERS, parse_tracestate
from fuzz.connection import server_connection

__all__ = ("TARGETS", "Finding", "decoder_client", "decoder_server", "tracestate")


class Finding(AssertionError):
    """A target's invariant does not hold for this input."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Finding(what)


HELLOS = {
    "hello": encode_hello(Hello(1, 1, DEFAULT_MAX_FRAME_SIZE)),
    "hello_reply": encode_hello_reply(HelloReply(1, DEFAULT_MAX_FRAME_SIZE)),
}
_CANONICAL = (Hello, HelloReply, Response, Cancel, Ping, Pong, GoAway, Item, End, Credit)  # one encoding each
_FILLER = bytes(range(256)) * 16  # 4 KiB


_EMPTY_SIZES = {bytes: sys.getsizeof(b""), bytearray: sys.getsizeof(bytearray())}


def _allocated(decoder: FrameDecoder) -> int:
    """Bytes the decoder holds: its buffers' allocated capacity, plus each large-body read's object overhead.

    White-box on purpose (``_buf``, ``_large``): ``buffered`` counts bytes, this counts memory.
    """
    total = len(decoder._buf) if type(decoder._buf) is bytes else sys.getsizeof(decoder._buf) - _EMPTY_SIZES[bytearray]
    large = decoder._large
    if type(large) is bytearray:  # a large body's own buffer
        total += sys.getsizeof(large) - _EMPTY_SIZES[bytearray]
    elif large is not None:  # the reads of a large body, kept as they came
        total += sys.getsizeof(large) + sum(sys.getsizeof(c) for c in large)
    return total


def _drain(decoder: FrameDecoder, use_frames: bool, out: list[Frame]) -> None:
    """Append every complete frame to ``out`` (those before an error too), as a transport would."""
    if use_frames:
        while True:
            out += decoder.frames()
            if not decoder.more:
                return
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)


def _reencode(frame: Frame) -> bytes:
    try:
        return encode_frame(frame)
    except LocalProtocolError as exc:
        raise Finding(f"the encoder refuses a frame the decoder accepted: {exc}; {frame!r:.300}") from None


def _whole(
    stream: bytes, expect: str, max_frame: int, limits: dict[str, int]
) -> tuple[list[Frame], list[bytes], RemoteProtocolError | None]:
    """The frames of ``stream`` fed at once, the bytes each came from, and the error that ended it."""
    decoder = FrameDecoder(max_frame, expect=expect, **limits)
    decoder.receive_data(stream)
    frames: list[Frame] = []
    spans: list[bytes] = []
    consumed = 0
    try:
        while (frame := decoder.next_frame()) is not None:
            end = len(stream) - decoder.buffered
            frames.append(frame)
            spans.append(stream[consumed:end])
            consumed = end
    except RemoteProtocolError as exc:
        return frames, spans, exc
    return frames, spans, None


def _decoder(data: bytes, expect: str) -> None:
    if not data:
        return
    options, data = data[0], data[1:]
    with_hello = options & 1
    use_frames = bool(options & 2)
    # A small maximum from the next 3 bytes (so "over the maximum" is reachable), or the default.
    # The same bytes also give small request limits (header size, metadata entries).
    if options & 4 and len(data) >= 3:
        max_frame, data = int.from_bytes(data[:3], "little") + 1, data[3:]
        limits = {"max_request_header_size": 17 + (max_frame & 0x3FF), "max_metadata_entries": max_frame >> 18}
    else:
        max_frame, limits = DEFAULT_MAX_FRAME_SIZE, {}
    pad_reads = (options >> 3) * 2  # 0 .. 62 reads of 4 KiB filler after the input (up to 248 KiB)
    # Chunk sizes: the input's first bytes, one per cut (0 ends the list), in 1..255.
    cuts: list[int] = []
    while data and data[0] and len(cuts) < 32:
        cuts.append(data[0])
        data = data[1:]
    data = data[1:]
    # b"FILL" + one byte n in the input stands for n x 4 KiB of filler (64 in all): several large
    # bodies in one short input, so a body after a larger one (allocated at once) is reached too.
    parts = data.split(b"FILL")
    budget = 64  # reads of filler in all, so that no input costs more than a few MiB of work
    pieces = [parts[0]]
    for part in parts[1:]:
        n = min(part[0], budget) if part else 0
        budget -= n
        pieces += (_FILLER * n, part[1:])
    data = b"".join(pieces)
    stream = (HELLOS[expect] if with_hello else b"") + data + _FILLER * pad_reads

    frames, spans, error = _whole(stream, expect, max_frame, limits)

    # Chunked, through the chosen API, with the memory checks after every read.
    decoder = FrameDecoder(max_frame, expect=expect, **limits)
    got: list[Frame] = []
    raised: RemoteProtocolError | None = None
    received = pos = 0
    sizes = iter(cuts)
    while pos < len(stream) and raised is None:
        n = next(sizes, 4096)
        chunk = stream[pos : pos + n]
        pos += len(chunk)
        decoder.receive_data(chunk if n % 3 else bytearray(chunk))  # bytes and bytearrays both arrive
        received += len(chunk)
        held = _allocated(decoder)
        check(held <= received * 2 + 1024, f"{held} bytes allocated after {received} received")
        check(decoder.buffered <= received, f"buffered {decoder.buffered} > received {received}")
        check(decoder.partial_body_bytes <= max(held, decoder.buffered), "partial_body_bytes > what is held")
        try:
            _drain(decoder, use_frames, got)
        except RemoteProtocolError as exc:
            raised = exc
        except Exception as exc:
            raise Finding(f"{type(exc).__name__} escaped the decoder: {exc}") from exc
    if raised is not None:
        for call in (decoder.next_frame, decoder.frames):
            try:
                call()
            except RemoteProtocolError as exc:
                check(exc is raised, "a broken decoder raised a different error")
            else:
                raise Finding("a broken decoder went on decoding")

    check(got == frames, f"chunking changed the frames: {len(got)} vs {len(frames)}")
    check((raised is None) == (error is None), f"chunking changed the outcome: {raised!r} vs {error!r}")

    for frame, span in zip(frames, spans, strict=True):
        if type(frame) is Hello:
            encoded = encode_hello(frame)
            check(decode_hello(encoded) == frame, "hello does not round-trip")
        elif type(frame) is HelloReply:
            encoded = encode_hello_reply(frame)
            check(decode_hello_reply(encoded) == frame, "hello reply does not round-trip")
        else:
            encoded = _reencode(frame)
            again = FrameDecoder(1 << 32)
            again.receive_data(encoded)
            check(again.next_frame() == frame and again.buffered == 0, f"does not round-trip: {frame!r:.300}")
        if type(frame) in _CANONICAL:
            check(encoded == span, f"re-encoded bytes differ: {frame!r:.300}")


def decoder_server(data: bytes) -> None:
    """A server's decoder (expects the client's hello, then requests, cancels, pings...)."""
    _decoder(data, "hello")


def decoder_client(data: bytes) -> None:
    """A client's decoder (expects the server's hello reply, then responses, errors, goaways...)."""
    _decoder(data, "hello_reply")


class _NoLogging(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise Finding(f"OpenTelemetry logged: {record.getMessage()[:200]!r}")


_otel_logger = logging.getLogger("opentelemetry")


def tracestate(data: bytes) -> None:
    """The W3C tracestate check in front of OpenTelemetry."""
    text = data.decode("utf-8", "surrogateescape")
    handler = _NoLogging(logging.DEBUG)
    level = _otel_logger.level
    _otel_logger.addHandler(handler)
    _otel_logger.setLevel(logging.DEBUG)
    try:
        state = parse_tracestate(text)
    finally:
        _otel_logger.removeHandler(handler)
        _otel_logger.setLevel(level)
    if len(text) <= MAX_TRACESTATE_LENGTH and text.isascii():
        # Differential: OpenTelemetry's own parser (its logging switched off) agrees, except that
        # for a duplicate key or more than 32 members it keeps nothing where we return None.
        logging.disable(logging.CRITICAL)  # its parser logs what it refuses (why callrt checks first)
        try:
            reference = list(TraceState.from_header([text]).items())
        finally:
            logging.disable(logging.NOTSET)
        check(reference == ([] if state is None else list(state.items())), f"OpenTelemetry reads {text!r} otherwise")
    if state is None:
        return
    check(len(text) <= MAX_TRACESTATE_LENGTH and text.isascii(), "accepted a long or non-ASCII tracestate")
    check(not any(c in text for c in "\r\n\x00"), "accepted a control character")
    check(len(state) <= MAX_TRACESTATE_MEMBERS, "accepted too many members")
    header = state.to_header()
    again = parse_tracestate(header)
    check(again is not None and list(again.items()) == list(state.items()), "does not round-trip")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "decoder-server": decoder_server,
    "decoder-client": decoder_client,
    "tracestate": tracestate,
    "server-connection": server_connection,  # fuzz/connection.py
}
