"""Stub methods of stream methods: items from the server as an async iterator, the caller's items sent as they come.

A server stream (or a bidirectional one) is a :class:`StreamCall`: ``async for
item in stub.watch(topic)`` opens it on the first item asked for. A client
stream is a coroutine, like a unary call: ``await stub.upload(chunks)``.
The caller's items (any iterable or async iterable) are sent by a task of the
client's, spending the server's credit, so a slow server pauses the caller's
iterable instead of buffering it.

A stream is retried, like a unary call and under the same rules, only while
nothing of it has reached the caller and nothing of the caller's items has
been taken: after that, a failure ends the stream with its error. A caller
that stops iterating (``break``, its scope cancelled, its deadline) cancels
the server's handler, whose generator's ``finally`` then runs.

Telemetry and interceptors, as for a unary call (see docs/observability.md,
"Stream calls"): once an SDK is configured, a stream has one CLIENT span and
its measurements (``rpc.client.duration``, ``rpc.client.request.size`` of the
opening request), from its opening to its end: the server's end, an error
(``error.type``), or the caller leaving it (``break``, ``aclose()``, leaving
``async with``, cancellation: ``error.type`` ``cancelled``); retries are events
on it. Its request carries the span's trace context (or the caller's, without
an SDK), so the server's SERVER span is its child. The client's interceptors
wrap a client stream's whole call, as a unary call's; a server or
bidirectional stream is iterated by the caller, so they wrap its opening:
``next`` picks a replica, sends the request and returns the opened stream.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .. import telemetry
from .._deadline import cancellation_first
from ..component import MethodSpec, caller_error
from ..connection.client import ClientStream
from ..context import CallOptions, current_deadline, serving_var
from ..errors import ClosedError, CommunicationError, ErrorCode, RemoteError
from ..interceptors import ClientCall, intercept_client, intercept_open
from ..protocol import TraceContext
from ..telemetry import CallRecord
from ..tracing import client_trace, current_otel_context
from .replicas import ManagedReplica

if TYPE_CHECKING:
    from .stubs import CallPath

__all__ = ("StreamCall", "stream_method")

T = TypeVar("T")


def stream_method(path: CallPath, method: MethodSpec, options: CallOptions | None = None) -> Callable[..., Any]:
    """``method``, a stream method, as a stub's function: a :class:`StreamCall`, or a coroutine for a client stream."""
    stream = method.stream
    assert stream is not None
    signature, takes = stream.signature, stream.takes

    def split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, object]:
        items: object = None
        if takes is not None:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{method.full_name}(): {exc}") from None
            name = list(signature.parameters)[takes]
            items = bound.arguments.pop(name)
            if not isinstance(items, (AsyncIterable, Iterable)):
                raise TypeError(f"{method.full_name}(): {name!r} takes an iterable or async iterable of items")
            args, kwargs = bound.args, bound.kwargs
        return method.payload_from_args(tuple(args), dict(kwargs)), items

    if stream.yields:

        def open_stream(*args: Any, **kwargs: Any) -> StreamCall:
            payload, items = split(args, kwargs)
            # With client interceptors, the stream keeps what the chain is to see when it opens.
            chain = (args, kwargs, split) if path.interceptors else None
            return StreamCall(path, method, options, payload, items, chain=chain)

        call: Callable[..., Any] = open_stream
    else:

        async def client_stream(*args: Any, **kwargs: Any) -> Any:
            payload, items = split(args, kwargs)
            async with StreamCall(path, method, options, payload, items) as sent:
                return await sent.result()

        async def intercepted(given: ClientCall) -> Any:
            payload, items = split(given.args, given.kwargs)
            async with StreamCall(path, method, given.options, payload, items, observer=given) as sent:
                return await sent.result()

        call = client_stream
        if path.interceptors:  # a coroutine like a unary call: the chain wraps the whole call, as it does those
            call = intercept_client(path.interceptors, method.full_name, options, path.effective_deadline, intercepted)
    return call


class StreamCall:
    """One stream call from a stub: iterate it for the server's items (``async for``), or close it.

    ``async with stub.watch(t) as items:`` closes it (cancelling the server's handler if it
    is still running) when the block ends; ``await stub.watch(t)`` opens it and gives it back,
    for an interface that declares the method ``async def ... -> AsyncIterator[T]``.
    """

    def __init__(
        self,
        path: CallPath,
        method: MethodSpec,
        options: CallOptions | None,
        payload: bytes,
        items: object,
        *,
        chain: tuple[tuple[Any, ...], dict[str, Any], Callable[..., tuple[bytes, object]]] | None = None,
        observer: ClientCall | None = None,
    ) -> None:
        if path.replicas.closed:
            raise ClosedError("the connection is closed")
        self._path, self._method, self._options, self._payload = path, method, options, payload
        self._items = items
        # The caller's arguments and how to encode them, for the client's interceptors to see at the
        # opening (None: no chain to run); the chain's ClientCall, which learns the replica.
        self._chain = chain
        self._observer = observer
        self._began = False  # the first opening was asked for (the interceptors ran)
        self._opened = False  # the first opening was made: the record and trace are set
        self._record: CallRecord | None = None  # the CLIENT span and measurements, until the stream ends
        self._trace: TraceContext | None = None  # what its requests carry
        self._pulled = False  # an item of the caller's was taken: the stream can no longer be retried
        self._stream: ClientStream | None = None
        self._pump: anyio.CancelScope | None = None
        self._caller_error: BaseException | None = None
        self._finished = False
        self._thread = threading.get_ident()
        deadline = path.effective_deadline()
        if serving_var.get() is not None:  # called from a handler: its deadline bounds this call too
            inherited = current_deadline()
            if inherited is not None and inherited < deadline:
                deadline = inherited
        self._deadline = deadline

    def __repr__(self) -> str:
        state = "finished" if self._finished else "open" if self._stream is not None else "not started"
        return f"<stream call {self._method.full_name} ({state})>"

    # -- opening, with retries before anything of it was used ------------------------------------

    async def _begin(self) -> None:
        """The first opening, through the client's interceptors when there are any (see the module's docs)."""
        if self._began:
            await self._open()
            return
        self._began = True
        chain = self._chain
        if chain is None:
            await self._open()
            return
        args, kwargs, _ = chain
        call = ClientCall(
            method=self._method.full_name, args=args, kwargs=kwargs, options=self._options, deadline=self._deadline
        )
        await intercept_open(self._path.interceptors, call, self._open_as)

    async def _open_as(self, call: ClientCall) -> StreamCall:
        """The end of the interceptors' chain: open the stream as ``call`` (maybe a changed copy) says."""
        self._observer = call
        chain = self._chain
        assert chain is not None
        if call.args is not chain[0] or call.kwargs is not chain[1]:
            self._payload, self._items = chain[2](call.args, call.kwargs)
        self._options = call.options  # also for a retry's opening: the metadata the chain added stays
        await self._open()
        return self

    async def _open(self) -> ClientStream:
        path, method, options = self._path, self._method, self._options
        replicas = path.replicas
        spec = method.stream
        assert spec is not None
        client_options = replicas.options
        record = self._record
        if not self._opened:  # the first opening: the call's record starts (in the caller's context)
            self._opened = True
            record = self._record = telemetry.client_record(method.full_name, len(self._payload))
            if record is None and current_otel_context():  # no SDK, but the caller's trace goes on
                self._trace = client_trace()
        await cancellation_first(self._deadline)
        attempt = 0
        while True:
            attempt += 1
            replica: ManagedReplica | None = replicas.balancer.pick(options)  # type: ignore[assignment]
            session = None if replica is None else replica.session
            if session is None:
                session = await replicas.wait_for_session(options, self._deadline, method.full_name)
            if self._observer is not None:
                self._observer.replica = str(session.endpoint)
            # The span starts at the first attempt, dated from the opening: the server's attributes among its first.
            trace = self._trace if record is None else record.replica(session.endpoint)
            stream = ClientStream(
                client_options.stream_window,
                client_options.stream_window_bytes,
                yields=spec.yields,
                takes=spec.takes is not None,
            )
            try:
                session.start(method.key, self._payload, self._deadline, trace, options, stream)
            except CommunicationError as exc:
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    raise
                telemetry.retried(record, attempt + 1, exc)
                await anyio.sleep(delay)
                continue
            self._stream = stream
            if spec.takes is not None:
                self._start_pump(stream)
            return stream

    def _retry_delay(self, exc: CommunicationError, attempt: int) -> float | None:
        if self._path.replicas.closed:
            raise ClosedError("the connection is closed") from exc
        if self._pulled or (self._stream is not None and self._stream.received):
            return None  # something of it was used: a retry could repeat or lose items
        return self._path.retrier.delay(exc, self._method.retriable, self._options, attempt, self._deadline)

    async def _reopen_after(self, exc: CommunicationError, attempt: int) -> bool:
        """After ``exc`` ended the stream: open it again if it may be retried."""
        delay = self._retry_delay(exc, attempt)
        if delay is None:
            return False
        telemetry.retried(self._record, attempt, exc)
        self._stop_pump()
        await anyio.sleep(delay)
        await self._open()
        return True

    # -- the caller's items ---------------------------------------------------------------------

    def _start_pump(self, stream: ClientStream) -> None:
        scope = self._pump = anyio.CancelScope()
        spawn = self._path.spawn
        assert spawn is not None, "a client's CallPath spawns its stream tasks"
        spawn(self._send_items, stream, scope)

    def _stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None

    async def _send_items(self, stream: ClientStream, scope: anyio.CancelScope) -> None:
        spec = self._method.stream
        assert spec is not None
        encode = spec.encode_input
        with scope:
            try:
                items = self._items
                if isinstance(items, AsyncIterable):
                    async for item in items:
                        self._pulled = True
                        if not await stream.send(encode(item)):
                            return
                else:
                    for item in items:  # type: ignore[attr-defined]
                        self._pulled = True
                        if not await stream.send(encode(item)):
                            return
            except Exception as exc:  # the caller's iterable (or an item that cannot be encoded) failed
                self._caller_error = exc
                stream.end(f"{type(exc).__name__}: {exc}")
                return
            stream.end()

    # -- the server's items ---------------------------------------------------------------------

    def __aiter__(self) -> StreamCall:
        return self

    async def __anext__(self) -> Any:
        stream = self._stream
        if stream is not None and (data := stream.take_nowait()) is not None:
            return self._decode(data)  # an item already here: no coroutine of ours to wait in
        if stream is None and self._finished:
            raise StopAsyncIteration
        try:
            data = await self._until(ClientStream.take)
        except BaseException as exc:
            self._close(exc)  # an error, cancelled, or its deadline: the server's handler is cancelled too
            raise
        if data is None:
            self._close(self._caller_error)
            if self._caller_error is not None:
                raise self._caller_error
            raise StopAsyncIteration
        return self._decode(data)

    def _decode(self, data: bytes) -> Any:
        spec = self._method.stream
        assert spec is not None
        try:
            return spec.decode_item(data)
        except Exception as exc:  # msgspec.ValidationError/DecodeError
            error = RemoteError(
                f"{self._method.full_name}: an item does not match the stream's item type: {exc}",
                code=ErrorCode.MALFORMED_RESPONSE,
            )
            self._close(error)
            raise error from None

    async def result(self) -> Any:
        """A client stream's result: the method's return value, once the server has it."""
        try:
            try:
                payload = await self._until(ClientStream.result)
            finally:
                if self._stream is not None and self._stream.done():
                    self._finished = True
            if self._caller_error is not None:
                raise self._caller_error
            result = self._method.decode_result(payload)
        except BaseException as exc:
            self._end_record(exc)
            raise
        self._end_record(None)
        return result

    async def _until(self, wait: Callable[[ClientStream], Awaitable[T]]) -> T:
        """``await wait(stream)``, the stream opened first and opened again after a failure it may retry.

        A remote error is raised as the caller's own, when its iterable failed, or as its declared type.
        """
        attempt = 1
        if self._stream is None:
            await self._begin()
        while True:
            stream = self._stream
            assert stream is not None
            try:
                return await wait(stream)
            except CommunicationError as exc:
                attempt += 1
                if not await self._reopen_after(exc, attempt):
                    raise
            except RemoteError as exc:
                raise self._caller_error or caller_error(self._method, exc) from None

    # -- closing --------------------------------------------------------------------------------

    def _close(self, error: BaseException | None = None) -> None:
        """Done with the stream (``error``: what ended it): cancel the server's handler if the stream has not ended."""
        self._finished = True
        self._stop_pump()
        stream, self._stream = self._stream, None
        left = stream is not None and not stream.done()
        if left and stream is not None and stream.session is not None:
            stream.session.give_up(stream.id, self._deadline)
        if self._record is not None:
            if error is None and left:
                self._record.cancelled("the caller left the stream")
            self._end_record(error)

    def _end_record(self, error: BaseException | None) -> None:
        """End the stream's CLIENT span and record its duration, once: ``error`` ended it (None: it succeeded)."""
        record, self._record = self._record, None
        if record is not None:
            telemetry.end_client_call(record, error)

    async def aclose(self) -> None:
        """Stop the stream; the server's handler is cancelled if it is still running."""
        self._close()

    def __await__(self) -> Any:
        return self._awaited().__await__()

    async def _awaited(self) -> StreamCall:
        if self._stream is None and not self._finished:
            try:
                await self._begin()
            except BaseException as exc:  # not opened (refused by an interceptor, no replica, cancelled)
                self._end_record(exc)
                raise
        return self

    async def __aenter__(self) -> StreamCall:
        return await self._awaited()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def __del__(self) -> None:
        # A caller that breaks out of ``async for`` drops the call: cancel the server's handler
        # then, on the event loop's own thread (a collector running elsewhere must not write).
        if not self._finished and self._stream is not None and threading.get_ident() == self._thread:
            self._close()
