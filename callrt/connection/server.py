"""One accepted connection's protocol logic, and the server state its connections share. No sockets here.

Theory of operation
-------------------
:class:`ServerConnection` is the protocol logic of one accepted connection; it
does no I/O itself. A transport shell (``callrt.transport``) owns the socket,
feeds it decoded frames, and is its :class:`ServerIO`: a way to write reply
bytes, a policy for what to do when an async handler blocks, and close.

*Inline handler execution.* Sync handlers, and async handlers that finish
without suspending, run on the reading path: no task is created for them,
and their replies join the same write as the other replies of that batch.
An async handler is driven by :func:`run_watched`, which notices its first
suspension; the connection then has ``inline_handler_duration`` before the
reading path is handed to a new task, so a slow handler cannot stall the
frames behind it. The blocked handler finishes on the task it started on
(cancel scopes bind to their task), which then retires. A negative duration
puts every async handler on a task of its own. A *plain* call (async, unary,
no deadline, no trace context, no SDK) needs nothing set up around it, so a
shell may await its method directly (:meth:`ServerIO.run_plain`): the
asyncio shell does, and notices a suspension from outside the task.

*Deadlines and cancellation.* A request's deadline (the caller's remaining
time) becomes the handler's; a cancel frame cancels the handler. Only a
handler that has blocked can be cancelled: one that runs to completion
without suspending has already replied by the time any later frame is read.

*Drain.* On shutdown the server removes itself from registries, stops
accepting, sends goaway on every connection, lets in-flight calls finish for
``drain_grace`` seconds, then closes what is left.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import traceback
import types
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import msgspec
from opentelemetry import context as otel_context

from .. import context as _context
from .. import telemetry
from .._threads import run_in_thread
from ..component import declared_error_args
from ..compression import BY_ID as CODECS_BY_ID
from ..compression import CompressionError, codecs_named, compress, decompress
from ..context import UNKNOWN_PEER, SyncSlot, stream_var
from ..endpoints import Endpoint
from ..errors import (
    Cancelled,
    CommunicationError,
    DeadlineExceeded,
    ErrorCode,
    InvalidArgument,
    PermissionDenied,
    RemoteError,
    RemoteProtocolError,
    UnknownMethod,
)
from ..handlers import HandlerMap, RegisteredHandler
from ..options import ServerOptions
from ..protocol import (
    REFUSED_BUSY,
    STREAM_VERSION,
    Cancel,
    Compressed,
    Credit,
    End,
    Error,
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
    choose_version,
    encode_frame,
    encode_hello_reply,
    pack_frame_header,
)
from ..telemetry import METRICS_API as metrics_api
from ..telemetry import TRACE_API as trace_api
from ..telemetry import CallRecord
from ..tracing import server_context
from ._access import checked_lookup
from ._flow import Inbox, SendCredit
from ._logs import LogLimiter, handler_failed, protocol_error

__all__ = (
    "ConnectionWatchdog",
    "Server",
    "ServerConnection",
    "ServerIO",
    "ServerStream",
    "error_frame",
    "run_watched",
)

logger = logging.getLogger("callrt.server")

_RESPONSE = int(FrameKind.RESPONSE)
_ITEM = int(FrameKind.ITEM)
# A module global, not a name imported from callrt.context: CPython 3.11 specializes the method
# calls (set, reset) on a global assigned here, not on one bound by an import statement.
serving_var = _context.serving_var


# Errors callrt raises itself when it turns a call away: their message says everything, and
# formatting a traceback for each would let a flood of bad calls cost the server ~50 µs apiece.
_SELF_EXPLANATORY = (InvalidArgument, UnknownMethod, DeadlineExceeded, Cancelled, PermissionDenied)


def error_frame(
    request_id: int, exc: BaseException, *, tracebacks: bool = True, max_size: int = 0, args: bool = False
) -> Error:
    """How ``exc``, raised while serving a call, travels to the caller.

    :param tracebacks: whether the caller may see where the server failed (file paths, code).
    :param max_size: the caller's maximum frame body, if known; text is cut to fit it.
    :param args: whether the caller speaks protocol version 2, so the ``args`` of an exception
        a component declared (``@component(errors=...)``) travel, under its declared name.
    """
    declared = declared_error_args(exc) if args else None
    if isinstance(exc, RemoteError):
        code, message = exc.code, exc.message
        remote_type = exc.remote_type or _qualname(type(exc))
        # One relayed from a nested call keeps the traceback of where it came from;
        # one the handler raised itself gets the handler's traceback.
        tb = exc.remote_traceback if tracebacks else ""
        if tracebacks and not tb and exc.__traceback__ is not None and not isinstance(exc, _SELF_EXPLANATORY):
            tb = "".join(traceback.format_exception(exc))
    else:
        # A communication failure of a nested call must not look like one of this call.
        code = ErrorCode.UNAVAILABLE if isinstance(exc, CommunicationError) else ErrorCode.UNKNOWN
        message, remote_type = str(exc), _qualname(type(exc))
        tb = "".join(traceback.format_exception(exc)) if tracebacks else ""
    encoded = None
    if declared is not None:
        remote_type, encoded = declared
    elif args and isinstance(exc, RemoteError):
        encoded = exc.remote_args  # relayed from a nested call: passed on unchanged, like the rest
    remote_type, message, tb = _utf8_safe(remote_type), _utf8_safe(message), _utf8_safe(tb)
    if max_size:
        # The caller drops a connection that sends a frame over its maximum: cut the
        # traceback first, then the message, so that the error itself always arrives.
        room = max_size - _ERROR_OVERHEAD - len(remote_type.encode())
        if encoded is not None:
            # Args cannot be cut: they travel whole when they take at most half the room, or not at all.
            encoded = encoded if len(encoded) <= room // 2 else None
            room -= len(encoded or b"")
        tb = _cut(tb, room - len(message.encode()))
        message = _cut(message, room - len(tb.encode()))
    return Error(request_id, code.value, remote_type, message, tb, encoded)


_ERROR_OVERHEAD = 256  # the error frame's fixed fields and code, with room to spare


def _cut(text: str, room: int) -> str:
    if len(text.encode()) <= room:
        return text
    return text.encode()[: max(0, room - 16)].decode(errors="ignore") + " [cut]"


def _utf8_safe(text: str) -> str:
    # An exception's text may hold lone surrogates (a surrogateescape'd file name,
    # say), which UTF-8 cannot carry: escape them rather than fail the reply.
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _qualname(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


@types.coroutine
def run_watched(coro: Coroutine[Any, Any, Any], on_block: Callable[[], None]) -> Any:
    """Await ``coro`` in the current task, calling ``on_block()`` at its first suspension.

    Equivalent to ``await coro`` otherwise: values and exceptions pass both ways.
    """
    try:
        yielded = coro.send(None)
    except StopIteration as done:
        return done.value
    on_block()
    return (yield from _rest_of(coro, yielded))


def _rest_of(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Drive ``coro``, which has suspended once (yielding ``yielded``), to its end: ``yield from`` it."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as done:
                return done.value


class ServerIO(Protocol):
    """What a transport shell does for a :class:`ServerConnection`: the I/O and the tasks."""

    def write(self, data: bytes) -> None:
        """Send ``data`` (coalescing writes as the shell likes)."""

    def run_async(self, request: Request, entry: RegisteredHandler, deadline: float | None) -> None:
        """Start the async handler of ``request`` (inline or on a task; see the module docstring).

        :raises RemoteProtocolError: ``request.id`` is the id of a call still in flight.
        """

    def run_plain(self, request: Request, entry: RegisteredHandler) -> None:
        """Start a plain async call: unary, no deadline, no trace context, no SDK (``entry.awaitable`` is set).

        Nothing is set up around such a call, so a shell may run ``entry.awaitable`` itself
        (:class:`~callrt.component.AwaitableMethod`) and answer with :meth:`ServerConnection.reply`
        or :meth:`ServerConnection.call_failed`. ``run_async(request, entry, None)`` also does.
        A reused id may be found when the call starts rather than here.
        """

    def cancel_running(self, request_id: int, reason: RemoteError) -> None:
        """Cancel the async handler of ``request_id``, if any, replying with ``reason``."""

    def close(self) -> None:
        """End the connection, after sending what was written."""


class ServerConnection:
    """Protocol logic of one accepted connection; its transport shell is its :class:`ServerIO`."""

    def __init__(self, server: Server, io: ServerIO) -> None:
        self.server = server
        # With an access policy, handlers are looked up through it (decided once per method and
        # connection); without one, the table's own lookup: the per-call path pays nothing.
        policy = server.options.access
        self.find_handler = (
            server.handlers.get if policy is None else checked_lookup(server.handlers.get, policy, lambda: self.peer)
        )
        self.peer_max_frame = 0  # the client's maximum frame, from its hello
        self.protocol_version = 0  # chosen at the hello; 2 and up carry declared exceptions' args
        self.peer = UNKNOWN_PEER  # set by the shell once the connection is accepted
        # Over max_connections: the hello is answered with a refusal, then the connection closes.
        self.refuse_busy = server.full()
        # What current_call() reads on the reading path, and on a shell's task running plain async
        # calls (run_plain) until one suspends: the call that holds the loop, filled per call.
        self.slot = SyncSlot()
        # anyio.current_time(), or the loop's own clock when a shell has one (the same clock,
        # without finding the backend on every call).
        self.now: Callable[[], float] = anyio.current_time
        self.flatten_limit = server.options.write_flatten_limit
        self.closed = False
        self.handshake_done = False
        # The shell's methods, bound once: they run for every frame.
        # Called through ``self.io``: CPython 3.11 specializes ``self.io.write(...)`` (a method of
        # io's class) but not a bound method stored on this instance.
        self.io = io
        self.close = io.close
        self.streams: dict[int, ServerStream] = {}  # stream calls in flight, by request id
        self.codecs = server.codecs  # the ids of the codecs a caller may compress with
        self.compress_above = server.options.compression_threshold

    def start_reading(self) -> contextvars.Token[Any]:
        """Shells call this before handling frames (and :meth:`stop_reading` after), in the same context."""
        return serving_var.set(self.slot)

    def stop_reading(self, token: contextvars.Token[Any]) -> None:
        serving_var.reset(token)

    @property
    def served(self) -> str:
        """What an unknown method's error adds: what this server serves (nothing with an access policy).

        The key is a hash, so only the caller knows the name it asked for (its stub adds it).
        """
        if self.server.options.access is not None:
            return ""  # a caller the policy would refuse learns nothing of what is served
        served = self.server.handlers.served()
        return f"; this server serves {served}" if served else "; this server serves no components"

    @property
    def send_tracebacks(self) -> bool:
        choice = self.server.options.send_tracebacks
        return self.peer.local if choice is None else choice

    def hello_received(self, hello: Hello) -> None:
        """Answer the client's hello (the first frame); a hello with no common version ends the connection."""
        if self.refuse_busy:
            self.io.write(encode_hello_reply(HelloReply(0, self.server.options.max_frame_size, REFUSED_BUSY)))
            raise RemoteProtocolError("refused: the server is at its connection limit")
        version = choose_version(hello)
        self.peer_max_frame = hello.max_frame_size
        self.protocol_version = version
        self.io.write(encode_hello_reply(HelloReply(version, self.server.options.max_frame_size)))
        if version == 0:
            raise RemoteProtocolError("no common protocol version")
        if version >= STREAM_VERSION:  # what a version 3 client waits for before its first call
            self.io.write(self.server.settings)
        self.handshake_done = True

    def protocol_error(self, exc: BaseException) -> None:
        """The shell is closing this connection over ``exc`` (a :class:`RemoteProtocolError`): log why."""
        if self.refuse_busy:
            if self.server.log_limiter.allow("busy") is not None:
                limit = self.server.options.max_connections
                logger.warning("refused a connection from %s: at max_connections (%d)", self.peer.address, limit)
            return
        protocol_error(self.server.log_limiter, self.peer.address, exc)

    # -- protocol ------------------------------------------------------------

    def frame_received(self, frame: object) -> None:
        if type(frame) is Request:
            self.request_received(frame)
        elif type(frame) is Cancel:
            self.io.cancel_running(frame.id, Cancelled("the caller cancelled the call"))
        elif type(frame) is Ping:
            self.io.write(encode_frame(Pong(frame.id)))
        elif type(frame) is Item or type(frame) is End or type(frame) is Credit:
            # For a stream that has ended, the caller's late items, end or credit are moot.
            stream = self.streams.get(frame.id)
            if stream is not None:
                stream.frame_received(frame)
        elif type(frame) is Pong:
            pass
        elif type(frame) is Compressed:
            self.compressed_received(frame)
        else:
            raise RemoteProtocolError(f"a client may not send {type(frame).__name__} frames")

    def compressed_received(self, frame: Compressed) -> None:
        """A compressed request or stream item: handled as its plain self, or that call fails (never the connection)."""
        inner = frame.frame
        if type(inner) is Response:
            raise RemoteProtocolError("a client may not send Response frames")
        try:
            if frame.codec not in self.codecs:
                raise CompressionError(f"codec {frame.codec} is not one this server offered")
            payload = decompress(frame.codec, inner.payload, self.server.options.max_frame_size)
        except CompressionError as exc:
            if type(inner) is Request:
                self.fail(inner.id, InvalidArgument(f"the request's payload: {exc}"))
            else:
                stream = self.streams.get(inner.id)
                if stream is not None and stream.inbox is not None:
                    stream.inbox.fail(InvalidArgument(f"a stream item: {exc}"))
            return
        if type(inner) is Request:
            self.request_received(msgspec.structs.replace(inner, payload=payload))
        else:
            self.frame_received(Item(inner.id, payload))

    def request_received(self, request: Request) -> None:
        entry = self.find_handler(request.method_key)
        if entry is None:
            self.fail(request.id, UnknownMethod(f"no handler for method key {request.method_key.hex()}{self.served}"))
            return
        deadline = None
        if request.deadline_us is not None:
            if request.deadline_us == 0:
                self.fail(request.id, DeadlineExceeded(f"{entry.name}: deadline passed before the call arrived"))
                return
            # The caller's time left becomes a deadline once, on arrival, for every use below.
            deadline = self.now() + request.deadline_us / 1e6
        if not entry.inline:  # async, or sync for a worker thread
            if (
                entry.awaitable is not None
                and deadline is None
                and request.trace is None
                and trace_api._TRACER_PROVIDER is None
                and metrics_api._METER_PROVIDER is None
            ):
                self.io.run_plain(request, entry)  # the common async call: nothing to set up around it
                return
            if entry.stream and not self.stream_opened(request, entry):
                return
            self.io.run_async(request, entry, deadline)
            return
        slot = self.slot
        slot.call = (request, entry.name, deadline, self.peer)
        # The SDK test is inlined (two module globals): a call per request cost more than the test.
        otel = (
            None
            if request.trace is None and trace_api._TRACER_PROVIDER is None and metrics_api._METER_PROVIDER is None
            else self._observe(request, entry.name)
        )
        try:
            result = entry.handler(request.payload)
        except Exception as exc:
            self.call_failed(request.id, entry.name, exc, otel)
        else:
            self.reply(request.id, result, request.accept)  # type: ignore[arg-type]
            if type(otel) is CallRecord:
                otel.response_size = len(result)  # type: ignore[arg-type]
        finally:
            slot.call = None
            if otel is not None:
                _finish(otel)

    def stream_opened(self, request: Request, entry: RegisteredHandler) -> bool:
        """A stream method's request arrived: its stream is open, unless the caller cannot take one."""
        if self.protocol_version < STREAM_VERSION:
            message = (
                f"{entry.name} is a stream method: it needs protocol version {STREAM_VERSION}, and this"
                f" caller speaks {self.protocol_version} (upgrade callrt on the caller)"
            )
            self.fail(request.id, UnknownMethod(message))
            return False
        if request.id in self.streams:
            raise RemoteProtocolError(f"request id {request.id} reused while its call is in flight")
        accept = request.accept if request.accept in self.codecs else 0
        self.streams[request.id] = ServerStream(self, request.id, accept)
        return True

    def reply(self, request_id: int, payload: bytes, accept: int = 0) -> None:
        """Send a call's result; ``accept``: the codec the caller accepts it in (the request's), 0 for none."""
        if self.streams:
            self.streams.pop(request_id, None)  # a stream's last frame: later ones for it are moot
        size = len(payload)
        if accept and size >= self.compress_above and accept in self.codecs:
            packed = compress(CODECS_BY_ID[accept], payload)
            if packed is not None and len(packed) <= self.peer_max_frame:
                self.io.write(pack_frame_header(len(packed), _RESPONSE | accept << 4, request_id))
                self.io.write(packed)
                return
        if size <= self.flatten_limit and size <= self.peer_max_frame:  # the common reply first
            self.io.write(pack_frame_header(size, _RESPONSE, request_id) + payload)
        elif size > self.peer_max_frame:
            # The caller would have to drop the connection over it: fail this call only.
            message = f"result of {size} bytes exceeds the caller's maximum frame of {self.peer_max_frame}"
            self.fail(request_id, RemoteError(message, code=ErrorCode.RESOURCE_EXHAUSTED))
        else:
            self.io.write(pack_frame_header(size, _RESPONSE, request_id))
            self.io.write(payload)

    def fail(self, request_id: int, exc: BaseException) -> None:
        if self.streams:
            self.streams.pop(request_id, None)
        error = error_frame(
            request_id,
            exc,
            tracebacks=self.send_tracebacks,
            max_size=self.peer_max_frame,
            args=self.protocol_version >= 2,
        )
        self.io.write(encode_frame(error))

    async def call_async(
        self, request: Request, entry: RegisteredHandler, deadline: float | None, on_block: Callable[[], None]
    ) -> None:
        """Run an async handler with ``on_block`` as its first-suspension hook, then reply."""
        serving = (request, entry.name, deadline, self.peer)
        token = serving_var.set(serving)
        # The SDK test is inlined (two module globals): a call per request cost more than the test.
        otel = (
            None
            if request.trace is None and trace_api._TRACER_PROVIDER is None and metrics_api._METER_PROVIDER is None
            else self._observe(request, entry.name)
        )
        stream_token = None
        try:
            if entry.stream:
                stream_token = stream_var.set(self.streams[request.id])
            if entry.is_async:
                # Until its first suspension the handler holds the loop: the slot says whose it is
                # (the shell's on_block empties it), for the server's watch of slow inline handlers.
                self.slot.call = serving
                result = await run_watched(entry.handler(request.payload), on_block)  # type: ignore[arg-type]
            else:  # a plain def: a worker thread runs it, so that it cannot block the loop
                on_block()
                # Cancelled, the call is answered at once; its thread keeps its token until it returns.
                result = await run_in_thread(entry.handler, request.payload, self.server.thread_limiter)
        except Exception as exc:
            self.call_failed(request.id, entry.name, exc, otel)
        except BaseException as exc:  # cancelled (by its caller, its deadline, the server going away): not served
            if type(otel) is CallRecord:
                telemetry.failed_or_cancelled(otel, exc)
            raise
        else:
            self.reply(request.id, result, request.accept)  # pyright: ignore[reportArgumentType]  # a plain def's bytes
            if type(otel) is CallRecord:
                otel.response_size = len(result)  # pyright: ignore[reportArgumentType]
        finally:
            self.slot.call = None
            serving_var.reset(token)
            if stream_token is not None:
                stream_var.reset(stream_token)
                self.streams.pop(request.id, None)
            if otel is not None:
                _finish(otel)

    def _observe(self, request: Request, name: str) -> object:
        """The call's span and measurements once an SDK is configured; else the caller's trace context."""
        if trace_api._TRACER_PROVIDER is not None or metrics_api._METER_PROVIDER is not None:
            return telemetry.start_server_call(name, request.trace, self.peer.address, len(request.payload))
        assert request.trace is not None
        return server_context(request.trace)

    def call_failed(self, request_id: int, name: str, exc: Exception, otel: object = None) -> None:
        """A handler raised ``exc``: log it (rate-limited), record it, answer the call with it."""
        handler_failed(self.server.log_limiter, name, exc, self.peer.address)
        if type(otel) is CallRecord:
            otel.failed(exc)
        self.fail(request_id, exc)

    def left_the_loop(self) -> None:
        """The shell's word that the async handler which held the loop has suspended."""
        self.slot.call = None

    def inline_call_running(self) -> str | None:
        """The method an inline handler is running on the event loop right now, if any (any thread may ask)."""
        call = self.slot.call
        return None if call is None else call[1]

    def goaway(self, reason: str) -> None:
        if not self.handshake_done:
            self.close()  # nothing in flight, and a goaway must not come before the hello reply
        elif not self.closed:
            self.io.write(encode_frame(GoAway(reason)))


class ServerStream:
    """The server's end of one stream call: the :class:`~callrt.context.StreamChannel` its handler uses.

    Items the handler yields wait for the caller's credit (the caller grants its window with
    the request); items the caller sends are held in an :class:`Inbox` whose window the server
    grants when the handler first asks for them (``stream_window`` items, ``stream_window_bytes``).
    """

    __slots__ = ("_early_error", "_ended_early", "accept", "conn", "credit", "id", "inbox")

    def __init__(self, conn: ServerConnection, request_id: int, accept: int = 0) -> None:
        self.conn = conn
        self.id = request_id
        self.accept = accept  # the codec the caller accepts items in
        self.credit = SendCredit()
        self.inbox: Inbox | None = None  # made when the handler first asks for the caller's items
        self._ended_early = False  # the caller's END came before the handler asked for items
        self._early_error = ""

    def frame_received(self, frame: Item | End | Credit) -> None:
        if isinstance(frame, Credit):
            self.credit.granted(frame.items, frame.size)
        elif isinstance(frame, Item):
            if self.inbox is None:  # no credit was granted for it
                raise RemoteProtocolError(f"stream {self.id}: item sent before the server granted credit")
            self.inbox.received(frame.payload)  # type: ignore[arg-type]
        elif self.inbox is None:
            self._ended_early = True  # (an error then fails the call's items at once, the same way)
            self._early_error = frame.error
        elif frame.error:
            self.inbox.fail(RemoteError(f"the caller's items failed: {frame.error}", code=ErrorCode.ABORTED))
        else:
            self.inbox.end()

    async def send(self, item: bytes) -> None:
        conn, size = self.conn, len(item)
        if size > conn.peer_max_frame:
            raise RemoteError(
                f"a stream item of {size} bytes exceeds the caller's maximum frame of {conn.peer_max_frame}",
                code=ErrorCode.RESOURCE_EXHAUSTED,
            )
        if not self.credit.try_spend(size):
            await self.credit.spend(size)
        if self.accept and size >= conn.compress_above:
            packed = compress(CODECS_BY_ID[self.accept], item)
            if packed is not None:
                conn.io.write(pack_frame_header(len(packed), _ITEM | self.accept << 4, self.id))
                conn.io.write(packed)
                return
        if size <= conn.flatten_limit:
            conn.io.write(pack_frame_header(size, _ITEM, self.id) + item)
        else:
            conn.io.write(pack_frame_header(size, _ITEM, self.id))
            conn.io.write(item)

    def try_send(self, item: bytes) -> bool:
        conn, size = self.conn, len(item)
        if (
            size > conn.flatten_limit
            or size > conn.peer_max_frame
            or (self.accept and size >= conn.compress_above)
            or not self.credit.try_spend(size)
        ):
            return False  # large, compressed, too large for the caller, or no credit: send() does it
        conn.io.write(pack_frame_header(size, _ITEM, self.id) + item)
        return True

    async def items(self) -> AsyncIterator[bytes]:
        if self.inbox is not None:
            raise RuntimeError("a stream's items can be iterated once")
        conn = self.conn
        options = conn.server.options
        self.inbox = inbox = Inbox(
            options.stream_window,
            options.stream_window_bytes,
            lambda items, size: conn.io.write(encode_frame(Credit(self.id, items, size))),
        )
        if self._early_error:
            inbox.fail(RemoteError(f"the caller's items failed: {self._early_error}", code=ErrorCode.ABORTED))
        elif self._ended_early:
            inbox.end()
        else:
            inbox.open()
        while (item := await inbox.take()) is not None:
            yield item

    async def run_sync(self, fn: Callable[..., Any], *args: object) -> Any:
        # Not abandoned on cancel: a generator's step must end before the generator is closed.
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.conn.server.thread_limiter)


class ConnectionWatchdog:
    """The timers of one server connection, checked on a tick rather than armed per frame.

    - handshake: the first tick comes ``handshake_timeout`` after accept; no hello by then ends it;
    - idle: no byte from the peer and no call in flight for ``idle_timeout`` ends it;
    - body: a frame begun and no frame completed for ``body_timeout`` ends it (a trickle of one
      byte a second cannot hold a connection and its buffer forever);
    - partial bodies: its share of the server-wide ``max_partial_bodies``.

    The shell sets :attr:`heard` on every read, adds to :attr:`frames` per batch, calls
    :meth:`account_partial` after reads that leave a body partly received, and
    :meth:`expired` every :attr:`interval` seconds.
    """

    def __init__(
        self, conn: ServerConnection, decoder: FrameDecoder, now: Callable[[], float], busy: Callable[[], bool]
    ) -> None:
        self.conn, self.decoder, self.now, self.busy = conn, decoder, now, busy
        options = conn.server.options
        self.interval = max(0.05, min(options.idle_timeout, options.body_timeout) / 4)
        self.heard = False
        self.holding = False  # the shell is not reading (backpressure): no frame can progress meanwhile
        self.frames = 0  # frames handled, counted per batch
        self.partial = 0  # this connection's bytes in Server.partial_bodies
        self._quiet_since = now()
        self._body_since: tuple[float, int] | None = None  # when a partial frame was first seen, frames then

    def expired(self) -> bool:
        """Whether the connection must end now (the reason is logged)."""
        conn, options, now = self.conn, self.conn.server.options, self.now()
        if not conn.handshake_done:
            logger.debug("%s: no hello within %ss", conn.peer.address, options.handshake_timeout)
            return True
        if self.heard or self.busy():
            self.heard = False
            self._quiet_since = now
        elif now - self._quiet_since >= options.idle_timeout:
            logger.debug("%s: idle for %ss, closed", conn.peer.address, options.idle_timeout)
            return True
        if self.decoder.buffered and not self.holding:
            since = self._body_since
            if since is None or since[1] != self.frames:
                self._body_since = (now, self.frames)
            elif now - since[0] >= options.body_timeout:
                if conn.server.log_limiter.allow("limits") is not None:  # many slow peers: not as many records
                    logger.warning("%s: a frame incomplete for %ss, closed", conn.peer.address, options.body_timeout)
                return True
        else:
            self._body_since = None
        return False

    def account_partial(self) -> bool:
        """Count this connection's partly received body in the server's total; whether it is over budget."""
        server = self.conn.server
        held = self.decoder.partial_body_bytes
        server.partial_bodies += held - self.partial
        self.partial = held
        if held and server.partial_bodies > server.options.max_partial_bodies:
            if server.log_limiter.allow("limits") is not None:  # many peers over it: not as many records
                logger.warning(
                    "%s: partly received bodies over %d bytes on the server, closed",
                    self.conn.peer.address,
                    server.options.max_partial_bodies,
                )
            return True
        return False

    def release(self) -> None:
        """The connection is gone: its partial body no longer counts."""
        self.conn.server.partial_bodies -= self.partial
        self.partial = 0


@dataclass(eq=False)
class Server:
    """A running server: its handlers, listeners and live connections.

    Made by ``call.serve`` (runs until cancelled, then drains) or
    ``call.start_server`` (an async context manager, for tests and embedding).
    """

    handlers: HandlerMap
    options: ServerOptions
    endpoints: list[Endpoint] = field(default_factory=list)
    connections: set[ServerConnection] = field(default_factory=set)
    #: Worker threads for plain ``def`` handlers (``handler_threads`` of them); made in the event loop.
    thread_limiter: anyio.CapacityLimiter | None = None
    #: Async calls in flight over all connections (the shells count them, for ``max_calls``).
    calls: int = 0
    #: Accepted connections still in their TLS handshake: they count in ``max_connections`` too.
    handshaking: int = 0
    #: Bytes of partly received frame bodies over all connections (for ``max_partial_bodies``).
    partial_bodies: int = 0
    #: Shells that stopped reading because ``calls`` reached ``max_calls``: called when it drops.
    waiting_for_calls: set[Callable[[], None]] = field(default_factory=set)
    #: Keeps a flood of one failure (a method failing every call, junk on the port) out of the log.
    log_limiter: LogLimiter = field(default_factory=LogLimiter)
    #: Set first thing by :meth:`drain`: ``callrt.Health`` then answers NOT_SERVING for everything.
    draining: bool = False
    #: What the application said of its components' health (:meth:`set_health`); ``""`` is the server.
    health: dict[str, bool] = field(default_factory=dict)
    #: Counts what :meth:`set_health` and :meth:`drain` changed, for ``callrt.Health.watch``.
    health_version: int = 0
    _health_event: anyio.Event | None = None
    _stop: anyio.Event = field(default_factory=anyio.Event)
    _all_closed: anyio.Event | None = None

    @functools.cached_property
    def codecs(self) -> frozenset[int]:
        """The ids of the compression codecs callers may use (``ServerOptions.compression``)."""
        return frozenset(codec.id for codec in codecs_named(self.options.compression))

    @functools.cached_property
    def settings(self) -> bytes:
        """The SETTINGS frame that follows the hello reply on version 3 connections: what the server offers."""
        return encode_frame(Settings(tuple(sorted(CODECS_BY_ID[i].name for i in self.codecs))))

    def full(self) -> bool:
        """At ``max_connections`` (TLS handshakes in progress included): a new connection is refused."""
        return len(self.connections) + self.handshaking >= self.options.max_connections

    def call_finished(self) -> None:
        self.calls -= 1
        if self.waiting_for_calls and self.calls < self.options.max_calls:
            waiting, self.waiting_for_calls = self.waiting_for_calls, set()
            for wake in waiting:
                wake()

    @property
    def endpoint(self) -> Endpoint:
        """The first bound endpoint (with the real port when port 0 was asked for)."""
        return self.endpoints[0]

    def set_health(self, component: str, *, serving: bool) -> None:
        """Make ``callrt.Health.check(component)`` answer SERVING or NOT_SERVING (``""``: the server as a whole).

        A draining server answers NOT_SERVING for everything, whatever was set.
        """
        self.health[component] = serving
        self.health_changed()

    def health_changed(self) -> None:
        """What ``callrt.Health`` answers may have changed: wake its watchers (:meth:`health_change`)."""
        self.health_version += 1
        if self._health_event is not None:
            self._health_event.set()
            self._health_event = None

    async def health_change(self, version: int) -> None:
        """Return once :attr:`health_version` is no longer ``version``."""
        while self.health_version == version:
            if self._health_event is None:
                self._health_event = anyio.Event()
            await self._health_event.wait()

    def stop(self) -> None:
        """Ask :func:`serve` to drain and return."""
        self._stop.set()

    def connection_opened(self, conn: ServerConnection) -> None:
        self.connections.add(conn)
        telemetry.connection_change(1)
        logger.debug("connection from %s accepted (%d open)", conn.peer.address, len(self.connections))

    def connection_closed(self, conn: ServerConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            telemetry.connection_change(-1)
            logger.debug("connection from %s closed (%d open)", conn.peer.address, len(self.connections))
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    async def drain(self) -> None:
        """Goaway to every connection; wait up to ``drain_grace`` for clients to finish and close; close the rest.

        Connections are left for their clients to close: a request that crossed
        the goaway on the wire is still served, which closing at the moment of
        zero calls in flight would lose.
        """
        self.draining = True  # first: health checks answer NOT_SERVING from now on
        self.health_changed()
        self._all_closed = anyio.Event()
        if self.connections:
            logger.info(
                "draining: goaway sent on %d connections; their calls have up to %ss to finish",
                len(self.connections),
                self.options.drain_grace,
            )
        for conn in list(self.connections):
            conn.goaway("server draining")
        if self.connections:
            with anyio.move_on_after(self.options.drain_grace):
                await self._all_closed.wait()
        if self.connections:
            logger.info(
                "drain_grace (%ss) is over: closing %d connections", self.options.drain_grace, len(self.connections)
            )
        for conn in list(self.connections):
            conn.close()
        self.connections.clear()


def _finish(otel: object) -> None:
    """End what ServerConnection._trace made current."""
    if type(otel) is CallRecord:
        telemetry.finish(otel)
    else:
        otel_context.detach(otel)  # type: ignore[arg-type]
