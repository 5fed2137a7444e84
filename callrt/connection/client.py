"""One client socket's protocol logic: the call table, frames in, requests and cancels out. No sockets here.

A :class:`ClientSession` is a client's connection to one replica, from its
hello to its loss. Its transport shell (``callrt.transport``) owns the socket,
feeds it frames, and is its :class:`ClientIO`. A failure of one session fails
only that session's calls and never another session of the same address:
each session is its own object with its own call table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from ..compression import BY_ID as CODECS_BY_ID
from ..compression import CODECS, CompressionError, compress, decompress
from ..context import CallOptions
from ..endpoints import Endpoint
from ..errors import (
    CommunicationError,
    ErrorCode,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
    SessionLost,
    remote_error,
)
from ..options import ClientOptions
from ..protocol import (
    HEADER_SIZE,
    REFUSED_BUSY,
    STREAM_VERSION,
    Cancel,
    Compressed,
    Credit,
    End,
    Error,
    FrameKind,
    GoAway,
    HelloReply,
    Item,
    Ping,
    Pong,
    Request,
    Response,
    Settings,
    TraceContext,
    encode_frame,
    encode_plain_request_header,
    encode_request_header,
    pack_frame_header,
)
from ._flow import Inbox, SendCredit

__all__ = ("ClientIO", "ClientSession", "ClientStream", "EventWaiter")

_MAX_DEADLINE_US = (1 << 64) - 1  # the protocol's u64 field
_MAX_DEADLINE_S = 1e12  # beyond it (31,000 years), the field's maximum: "no limit"
_INF = math.inf
_ITEM = int(FrameKind.ITEM)


class ClientIO(Protocol):
    """What a transport shell does for a :class:`ClientSession`."""

    def send(self, request_id: int, header: bytes, payload: bytes) -> None:
        """Write one request, coalescing as the shell likes; call :meth:`ClientSession.mark_sent`
        when what it held back is handed to the socket."""

    def write(self, data: bytes) -> None:
        """Write a control frame (cancel, ping, pong)."""

    def abort(self, error: BaseException) -> None:
        """Close the socket now; calls fail with ``error``'s message."""


class EventWaiter:
    """A one-shot result slot for any anyio backend; awaitable like an asyncio future."""

    __slots__ = ("_error", "_event", "_result")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def set_result(self, value: Any) -> None:
        self._result = value
        self._event.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    def __await__(self) -> Any:
        yield from self._event.wait().__await__()
        if self._error is not None:
            raise self._error
        return self._result


class ClientSession:
    """Protocol logic of one client socket; its transport shell is its :class:`ClientIO`."""

    def __init__(self, endpoint: Endpoint, options: ClientOptions, io: ClientIO) -> None:
        self.endpoint = endpoint
        self.options = options
        self.calls: dict[int, Any] = {}
        # Every request with a smaller id has been handed to the socket; shells hold requests
        # back only in id order, so the ones at or above it are exactly those still held.
        self.sent_below = 1
        self.next_id = 1
        self.peer_max_frame = options.max_frame_size
        self.version = 0  # the protocol version the server chose
        self.offered: frozenset[str] = frozenset()  # the codecs the server decompresses (its SETTINGS)
        self.codec = 0  # the id of ClientOptions.compression when the server offers it, else 0
        self.compress_above = options.compression_threshold
        self.flatten_limit = options.write_flatten_limit
        self.ready = anyio.Event()  # hello reply received
        self.lost = anyio.Event()  # socket gone
        self.goaway = anyio.Event()  # server draining
        self._idle: anyio.Event | None = None  # set when the last call finishes, if someone waits
        self.error: BaseException | None = None
        self.is_lost = False  # ``lost`` as a plain flag, for the per-call check
        self.caller = options.caller
        # When the peer last spoke, set by the shell on every read, on the loop's clock (which
        # keepalive also sleeps on, so trio's MockClock drives it exactly).
        self.last_received = 0.0
        self.pongs = 0  # pongs received: keepalive waits for one after each ping
        self.on_lost: Callable[[], None] | None = None  # called once, when the socket is gone
        # anyio.current_time(), or the loop's own clock when a shell has one (the same clock,
        # without finding the backend on every call).
        self.now: Callable[[], float] = anyio.current_time
        # The shell's methods, bound once: they run for every call. The asyncio shell replaces
        # new_waiter with its loop's create_future (no Python frame per call).
        self.io = io  # called through, for CPython 3.11's method-call specialization (see ServerConnection)
        self.write = io.write
        self.abort = io.abort
        self.new_waiter: Callable[[], Any] = EventWaiter

    def mark_sent(self) -> None:
        """Everything held back so far was handed to the socket."""
        self.sent_below = self.next_id

    @property
    def pending(self) -> int:
        """Calls in flight on this session: its call table's size, so each finish counts once."""
        return len(self.calls)

    def frame_received(self, frame: object) -> None:
        kind = type(frame)
        if kind is Response:
            waiter = self.calls.pop(frame.id, None)  # type: ignore[attr-defined]
            if waiter is not None:
                # A caller cancelled an instant ago has a done waiter but has not yet given up.
                if not waiter.done():
                    waiter.set_result(frame.payload)  # type: ignore[attr-defined]
                self._call_done()
        elif kind is Error:
            waiter = self.calls.pop(frame.id, None)  # type: ignore[attr-defined]
            if waiter is not None:
                if not waiter.done():
                    f: Error = frame  # type: ignore[assignment]
                    waiter.set_exception(
                        remote_error(ErrorCode.parse(f.code), f.remote_type, f.message, f.traceback, f.args)
                    )
                self._call_done()
        elif kind is Item or kind is Credit:
            stream = self.calls.get(frame.id)  # type: ignore[attr-defined]
            if type(stream) is ClientStream:
                stream.frame_received(frame)  # type: ignore[arg-type]
            elif stream is not None:
                raise RemoteProtocolError(f"{kind.__name__} frame for call {frame.id}, which is not a stream")  # type: ignore[attr-defined]
            # else: a stream the caller gave up on; what was in flight for it is moot
        elif kind is Compressed:
            self._compressed(frame)  # type: ignore[arg-type]
        elif kind is Settings:
            self.offered = frozenset(frame.codecs)  # type: ignore[attr-defined]
            self.codec = self.codec_for(self.options.compression)
            self.ready.set()
        elif kind is Pong:
            self.pongs += 1
        elif kind is HelloReply:
            self._hello_reply(frame)  # type: ignore[arg-type]
        elif kind is Ping:
            self.write(encode_frame(Pong(frame.id)))  # type: ignore[attr-defined]
        elif kind is GoAway:
            self.goaway.set()
        else:
            raise RemoteProtocolError(f"a server may not send {kind.__name__} frames")

    def _hello_reply(self, reply: HelloReply) -> None:
        if reply.refused == REFUSED_BUSY:
            self.abort(CommunicationError("the server refused the connection: it is at its connection limit"))
            return
        if reply.version == 0:
            raise RemoteProtocolError("the server speaks no protocol version we do")
        self.peer_max_frame = reply.max_frame_size
        self.version = reply.version
        if reply.version < STREAM_VERSION:
            self.ready.set()
        # else ready once the server's SETTINGS (which follow its hello reply at once) say what it offers

    def _call_done(self) -> None:
        if self._idle is not None and not self.calls:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call is in flight on this session."""
        while self.calls:
            self._idle = anyio.Event()
            await self._idle.wait()

    def connection_lost(self, error: BaseException | None) -> None:
        """The socket is gone: fail every call still waiting, once."""
        if self.is_lost:
            return
        self.is_lost = True
        self.error = error
        reason = f"connection to {self.endpoint} lost" + (f": {error}" if error else "")
        calls, self.calls = self.calls, {}
        for request_id, waiter in calls.items():
            if not waiter.done():
                exc = SessionLost(reason, sent=request_id < self.sent_below)
                if error is not None:
                    exc.__cause__ = error
                waiter.set_exception(exc)
        self.lost.set()
        self.ready.set()  # wake a handshake waiter; it checks ``lost``
        self._call_done()
        if self.on_lost is not None:
            self.on_lost()

    def start(
        self,
        key: bytes,
        payload: bytes,
        deadline: float,
        trace: TraceContext | None,
        options: CallOptions | None,
        stream: ClientStream | None = None,
    ) -> tuple[int, Any]:
        """Send one request; returns its id and the waiter its reply will resolve.

        ``deadline`` is in ``anyio.current_time()`` terms, ``inf`` for none. A stream call
        passes its :class:`ClientStream`, which is then its waiter.
        """
        if self.is_lost:
            raise SessionLost(f"connection to {self.endpoint} is closed", sent=False)
        if stream is not None and self.version < STREAM_VERSION:
            raise LocalProtocolError(
                f"{self.endpoint} speaks protocol version {self.version}; stream methods need"
                f" {STREAM_VERSION} (upgrade callrt on the server)"
            )
        request_id = self.next_id
        self.next_id = request_id + 1
        size = len(payload)
        if deadline == _INF:
            deadline_us = None
        else:
            left = deadline - self.now()
            # -inf is a caller whose scope is already cancelled: the time left is none.
            deadline_us = int(left * 1e6) if 0 < left < _MAX_DEADLINE_S else 0 if left <= 0 else _MAX_DEADLINE_US
        codec = self.codec if options is None or options.compression is None else self.codec_for(options.compression)
        if options is None and not self.caller and not codec:
            header = encode_plain_request_header(request_id, key, size, deadline_us, trace)
        else:
            packed = compress(CODECS_BY_ID[codec], payload) if codec and size >= self.compress_above else None
            if packed is not None:
                payload, size = packed, len(packed)
            header = self._full_header(request_id, key, size, deadline_us, trace, options, codec, packed is not None)
        if len(header) - HEADER_SIZE + size > self.peer_max_frame:
            raise LocalProtocolError(
                f"request of {size} bytes exceeds the server's maximum frame of {self.peer_max_frame}"
            )
        if stream is None:
            self.calls[request_id] = waiter = self.new_waiter()
            self.io.send(request_id, header, payload)
            return request_id, waiter
        self.calls[request_id] = stream
        self.io.send(request_id, header, payload)
        stream.opened(self, request_id, codec)
        return request_id, stream

    def codec_for(self, name: str | None) -> int:
        """The id of codec ``name`` when both sides have it, else 0 (``None`` and ``"none"``: 0)."""
        if name is None or name not in self.offered or name not in CODECS:
            return 0
        return CODECS[name].id

    def _compressed(self, frame: Compressed) -> None:
        """A compressed reply or stream item: decompressed for its call, or that call fails."""
        inner = frame.frame
        if type(inner) is Request:
            raise RemoteProtocolError("a server may not send Request frames")
        waiter = self.calls.get(inner.id)
        if waiter is None:
            return  # a call the caller gave up on
        try:
            payload = decompress(frame.codec, inner.payload, self.options.max_frame_size)
        except CompressionError as exc:
            self.calls.pop(inner.id, None)
            if not waiter.done():
                waiter.set_exception(RemoteError(f"the server's reply: {exc}", code=ErrorCode.MALFORMED_RESPONSE))
            self._call_done()
            return
        self.frame_received(Response(inner.id, payload) if type(inner) is Response else Item(inner.id, payload))

    def _full_header(
        self,
        request_id: int,
        key: bytes,
        size: int,
        deadline_us: int | None,
        trace: TraceContext | None,
        options: CallOptions | None,
        accept: int = 0,
        compressed: bool = False,
    ) -> bytes:
        metadata: tuple[tuple[str, str], ...] = ()
        shard_key = None
        if options is not None:
            shard_key = options.shard_key
            metadata = tuple(options.metadata.items()) if options.metadata else ()
        codec = accept if compressed else 0
        return encode_request_header(
            request_id, key, size, deadline_us, trace, metadata, self.caller, shard_key, accept, codec
        )

    def give_up(self, request_id: int, deadline: float) -> None:
        """The caller stopped waiting (cancelled, or timed out here): tell the server if it matters."""
        if self.calls.pop(request_id, None) is None:
            return
        if self.now() < deadline:
            # Past the deadline the server needs no cancel: it enforces deadlines itself.
            # A request still held back leaves before its cancel, which then cancels it.
            self.write(encode_frame(Cancel(request_id)))
        self._call_done()

    async def spin(self, waiter: Any, duration: float) -> None:
        """Keep the loop polling for ``waiter``'s reply for up to ``duration`` seconds before parking.

        On an event loop, "spinning" is yielding with zero timeouts: the loop
        polls the socket instead of parking the thread in the kernel.
        """
        end = time.perf_counter() + duration
        while not waiter.done() and time.perf_counter() < end:
            await anyio.lowlevel.checkpoint()

    async def keepalive(self) -> None:
        """Ping after ``keepalive_interval`` of silence; abort if nothing arrives in ``keepalive_timeout``."""
        interval, timeout = self.options.keepalive_interval, self.options.keepalive_timeout
        if interval <= 0:
            return
        nonce = 0
        now = self.now
        self.last_received = max(self.last_received, now())
        while not self.lost.is_set():
            quiet = now() - self.last_received
            if quiet < interval:
                await anyio.sleep(interval - quiet)
                continue
            nonce += 1
            pongs = self.pongs
            self.write(encode_frame(Ping(nonce)))
            await anyio.sleep(timeout)
            # The pong itself, not just bytes: after a silence, bytes that complete no frame (a
            # frame whose length was corrupted in transit swallows them) are no sign of a usable
            # connection, and its calls would hang forever.
            if self.pongs == pongs:
                self.abort(CommunicationError(f"{self.endpoint} did not answer a ping within {timeout}s"))
                return


class ClientStream:
    """The client's end of one stream call; it is also the call's waiter in the session's table.

    Items from the server wait in an :class:`Inbox` (``stream_window`` items, ``stream_window_bytes``,
    granted with the request); items for the server spend the credit the server grants. The
    stream's end (the RESPONSE, or an ERROR) resolves it as a waiter: the caller gets the items
    that came before it first. :attr:`received` counts items taken, for retries: a stream is
    retried only before its first item.
    """

    def __init__(self, window: int, window_bytes: int, *, yields: bool, takes: bool) -> None:
        self.yields, self.takes = yields, takes
        self.session: ClientSession | None = None
        self.id = 0
        self.window, self.window_bytes = window, window_bytes
        self.inbox: Inbox | None = None
        self.credit = SendCredit()
        self.codec = 0  # the compression codec of the items this side sends
        self.received = 0  # items the caller took
        self._finished = anyio.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    def opened(self, session: ClientSession, request_id: int, codec: int = 0) -> None:
        """The request left with id ``request_id``: grant the server its window of items to send.

        ``codec``: the call's compression codec (0: none), for the items this side sends.
        """
        self.session, self.id, self.codec = session, request_id, codec
        if self.yields:

            def grant(items: int, size: int) -> None:
                if not session.is_lost:
                    session.write(encode_frame(Credit(request_id, items, size)))

            self.inbox = Inbox(self.window, self.window_bytes, grant)
            self.inbox.open()

    def frame_received(self, frame: Item | Credit) -> None:
        if isinstance(frame, Credit):
            if not self.takes:
                raise RemoteProtocolError(f"credit for stream {self.id}, which sends no items")
            self.credit.granted(frame.items, frame.size)
        elif self.inbox is None:
            raise RemoteProtocolError(f"an item for call {self.id}, whose method yields none")
        else:
            self.inbox.received(frame.payload)  # type: ignore[arg-type]

    # The waiter's side: the session resolves the call with the stream's end.

    def done(self) -> bool:
        return self._finished.is_set()

    def set_result(self, payload: Any) -> None:
        self._result = payload
        self._finish()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        if self.inbox is not None:
            self.inbox.fail(error)
        self._finish()

    def _finish(self) -> None:
        if self.inbox is not None:
            self.inbox.end()
        self.credit.fail(self._error or _StreamEnded())
        self._finished.set()

    async def result(self) -> Any:
        """The stream's last frame: the RESPONSE's payload, or its error raised."""
        await self._finished.wait()
        if self._error is not None:
            raise self._error
        return self._result

    # The caller's side.

    async def take(self) -> bytes | None:
        """The next item from the server; ``None`` once the stream ended well. Raises its error."""
        assert self.inbox is not None
        item = await self.inbox.take()
        if item is not None:
            self.received += 1
        return item

    def take_nowait(self) -> bytes | None:
        """The next item from the server if one is here already; ``None``: await :meth:`take`."""
        assert self.inbox is not None
        item = self.inbox.take_nowait()
        if item is not None:
            self.received += 1
        return item

    async def send(self, item: bytes) -> bool:
        """Send one encoded item once the server's credit allows it; False if the call has ended."""
        session = self.session
        assert session is not None
        size = len(item)
        if size > session.peer_max_frame:
            raise LocalProtocolError(
                f"a stream item of {size} bytes exceeds the server's maximum frame of {session.peer_max_frame}"
            )
        try:
            await self.credit.spend(size)
        except _StreamEnded:
            return False
        if self.done() or session.is_lost:
            return False
        codec = self.codec
        if codec and size >= session.compress_above:
            packed = compress(CODECS_BY_ID[codec], item)
            if packed is not None:
                session.write(pack_frame_header(len(packed), _ITEM | codec << 4, self.id) + packed)
                return True
        session.write(pack_frame_header(size, _ITEM, self.id) + item)
        return True

    def end(self, error: str = "") -> None:
        """The caller's items are all sent; or, with ``error``, its iterable failed (the server's handler sees it)."""
        session = self.session
        if session is not None and not self.done() and not session.is_lost:
            session.write(encode_frame(End(self.id, error[:4096])))


class _StreamEnded(Exception):
    """The call ended while its caller still had items to send (the server answered without them)."""
