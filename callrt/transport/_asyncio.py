"""The asyncio fast path: an asyncio Protocol per connection (uvloop's when it runs the loop).

Bytes arrive in ``data_received`` and go straight into the sans-IO decoder;
no task reads the socket. Writes are coalesced: everything written while a
batch of frames is being handled leaves in one ``transport.write`` at the end
of the batch. On the client, the request of a lone call (none other in
flight) goes out at once, for the lowest latency; with other calls in flight,
every request of the loop iteration is held and the batch leaves in one write
at its end (fewest syscalls, and the server is not woken for one request
while the others are still being made). Both ends honour the transport's
flow control: while it is paused, what they write waits in their own list.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
from anyio.abc import SocketAttribute, TaskGroup

from .._writes import joined
from ..component import AwaitableMethod
from ..connection.client import ClientSession
from ..connection.server import ConnectionWatchdog, Server, ServerConnection, serving_var
from ..endpoints import Endpoint
from ..errors import CommunicationError, DeadlineExceeded, RemoteError, RemoteProtocolError
from ..handlers import RegisteredHandler
from ..options import ClientOptions
from ..protocol import Frame, FrameDecoder, Hello, Request, Response
from ._tls import TLSListener, connect_tls
from .base import (
    Transport,
    UnixSocketFile,
    bind_tcp,
    bind_unix,
    client_hello,
    connect_errors,
    handshake,
    socket_peer,
    tls_server_name,
)


class _AsyncCall:
    """An async handler's call, from the moment it is accepted until it replies.

    ``task`` is set when the handler first blocks; ``reason`` when the call is
    cancelled (a cancel frame or its deadline), whether it is running, blocked
    or still waiting for its turn, so no cancel is lost.
    """

    __slots__ = ("deadline", "entry", "reason", "request", "task", "timers")

    def __init__(self, request: Request, entry: RegisteredHandler, deadline: float | None) -> None:
        self.request = request
        self.entry = entry
        self.deadline = deadline  # loop time (anyio.current_time() on asyncio)
        self.task: asyncio.Task[Any] | None = None
        self.reason: RemoteError | None = None
        self.timers: list[asyncio.TimerHandle] = []


class _Dispatcher:
    """A task that runs a connection's queued async calls one after another, and the plain call it is in.

    While the task awaits a plain call's method (``run_plain``), the connection's slot
    holds the call; ``blocked`` is its :class:`_AsyncCall` once the task was found
    stopped in it (:meth:`ServerProtocol._notice_blocked`): the method suspended.
    """

    __slots__ = ("blocked", "check_scheduled", "context", "items", "task")

    def __init__(self, context: contextvars.Context) -> None:
        self.context = context  # the task's: where the call's serving_var is set when it blocks
        self.task: asyncio.Task[None] | None = None
        self.blocked: _AsyncCall | None = None
        self.check_scheduled = False
        self.items: Iterator[_Queued] = iter(())


class _QueuedCancel:
    """A cancel frame for a call that may still be queued: the dispatcher applies it after the call started."""

    __slots__ = ("reason", "request_id")

    def __init__(self, request_id: int, reason: RemoteError) -> None:
        self.request_id = request_id
        self.reason = reason


# What a connection's dispatcher runs, in order: a plain call, or another call or a cancel.
_Queued = tuple[Request, RegisteredHandler] | tuple[None, _AsyncCall | _QueuedCancel]

# Above this many unsent bytes a transport pauses its writer. asyncio's default (64 KiB)
# paused every 1 MiB write and let the socket run dry before the low-water mark: 1 MiB
# calls ran at less than half the speed (bench/README.md, flow control).
_WRITE_BUFFER_HIGH = 1024 * 1024


class _Writer(asyncio.Protocol):
    """What both ends share: frames held in ``_out`` and written together, and flow control.

    Held frames go to the transport in one call: joined when they are small,
    else as a list (one ``writev`` on uvloop, no copy). While the transport's
    buffer is above its high-water mark (``pause_writing``), frames stay held.
    Where ``writelines`` would join the list (the default loop before Python
    3.12), large frames are handed over one at a time until the transport
    pauses: its buffer is one ``bytearray``, extended and trimmed with copies,
    and tens of megabytes in it made 1 MiB calls 5 to 9 times slower.
    """

    flatten_limit: int

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._paused = False
        self._writelines_copies = False

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(_WRITE_BUFFER_HIGH)  # type: ignore[union-attr]
        self._writelines_copies = type(transport).writelines is asyncio.WriteTransport.writelines  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._flush()

    def _flush(self) -> bool:
        """Hand what is held to the transport, unless it asked us to wait; whether any of it went.

        What a pause leaves unwritten stays held; what a closing transport cannot take is dropped.
        """
        out = self._out
        if not out or self._paused:
            return False
        transport = self.transport
        if transport is None or transport.is_closing():
            out.clear()
            return False
        data = joined(out, self.flatten_limit)
        if data is not None:
            transport.write(data)
        elif not self._writelines_copies:
            transport.writelines(out)
        else:
            for i, buffer in enumerate(out):
                if self._paused:
                    del out[:i]
                    return True
                transport.write(buffer)
        out.clear()
        return True


class ServerProtocol(_Writer):
    """One accepted connection on the asyncio fast path (the :class:`ServerIO` of its connection)."""

    def __init__(self, server: Server) -> None:
        _Writer.__init__(self)
        self.server = server
        self.conn = conn = ServerConnection(server, self)
        self.flatten_limit = conn.flatten_limit
        self.loop = asyncio.get_running_loop()
        conn.now = self.loop.time
        # Tasks that run handlers start from this context, never from the context of the
        # handler that happened to hand off to them (its trace context, say).
        self._context = contextvars.copy_context()
        self.decoder = FrameDecoder(server.options.max_frame_size, expect="hello")
        self.inline_duration = server.options.inline_handler_duration
        self.task_per_call = self.inline_duration < 0
        self.coalesce = server.options.coalesce_writes
        # A batch of more replies than this leaves in two writes (write): see split_replies_above.
        self.split_above = self._part = server.options.split_replies_above or sys.maxsize
        self._batching = False
        self._flush_scheduled = False
        # Calls for the dispatcher, in order; it takes the whole list at a time. The reading path
        # wakes it at the end of each batch of frames.
        self._queue: list[_Queued] = []
        self._dispatcher: _Dispatcher | None = None  # the one that runs the queue
        self._parked: asyncio.Future[None] | None = None
        self._calls: dict[int, _AsyncCall] = {}
        self._current: _AsyncCall | None = None
        # Reading is held (the socket not read) while replies wait for a peer that does not read
        # them, or calls in flight are at their cap; frames decoded past a turn's budget wait here.
        self._held_frames: list[Frame] | None = None
        self._hold_reading = False
        self._reading_paused = False
        self._turn_scheduled = False
        self.frames_per_turn = server.options.frames_per_turn
        self.max_calls = server.options.max_calls_per_connection
        self.watchdog = ConnectionWatchdog(self.conn, self.decoder, self.loop.time, lambda: bool(self._calls))
        self._watch_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._attach(transport)
        info = transport.get_extra_info
        if info("sslcontext") is not None:
            # Over TLS a part is a record to encrypt, send, read and decrypt: smaller batches
            # cost more than the overlap gains (bench/README.md, replies in parts).
            self.split_above = self._part = sys.maxsize
        self.conn.peer = socket_peer(info("socket"), info("peername"), info("peercert"))
        if not self.conn.refuse_busy:
            self.server.connection_opened(self.conn)
        self._watch_timer = self.loop.call_later(self.server.options.handshake_timeout, self._watch)

    def data_received(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        self.watchdog.heard = True
        self._handle_frames()

    def _handle_frames(self) -> None:
        decoder, conn = self.decoder, self.conn
        if conn.slot.call is not None:  # a plain call's method suspended: first make it a blocked call
            self._notice_blocked()
        self._batching = True
        token = conn.start_reading()
        budget = self.frames_per_turn
        try:
            frames = self._held_frames or decoder.frames()
            self._held_frames = None
            if frames:
                self.watchdog.frames += 1  # progress, for the body timeout: a batch is enough
            while frames:
                if len(frames) > budget:  # this connection's turn is over: the rest wait for the next
                    self._held_frames, frames = frames[budget:], frames[:budget]
                self._part = max(self.split_above, (len(frames) + 1) >> 1)
                for frame in frames:
                    if type(frame) is Request:  # frame_received's first case, inlined for the common frame
                        conn.request_received(frame)
                    elif type(frame) is Hello:
                        conn.hello_received(frame)
                    else:
                        conn.frame_received(frame)
                if self._held_frames is not None or self._hold_reading:
                    break
                budget -= len(frames)
                frames = decoder.frames() if decoder.more else []
        except RemoteProtocolError as exc:
            # Framing is lost: this connection ends, every other one goes on.
            self._batching = False
            conn.protocol_error(exc)
            self.close()
            return
        finally:
            conn.stop_reading(token)
        self._batching = False
        if self._queue:
            if len(self._queue) >= self.max_calls:
                self._update_hold()
            self._wake_dispatcher()
        if self._held_frames is not None or decoder.more or self._hold_reading:
            self._pause_reading()
            if not self._hold_reading:
                self._schedule_turn()  # after the other connections' turns
        elif self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if (decoder.partial_body_bytes or self.watchdog.partial) and self.watchdog.account_partial():
            self.close()
            return
        self._flush()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.conn.closed:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            self.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_scheduled = False
        if not self._hold_reading and not self.conn.closed:
            self._handle_frames()

    def _update_hold(self) -> None:
        """Hold reading while replies are not being read or calls are at their cap; resume when neither."""
        server = self.server
        over_server_cap = server.calls >= server.options.max_calls
        hold = self._paused or max(len(self._calls), len(self._queue)) >= self.max_calls or over_server_cap
        if over_server_cap:
            server.waiting_for_calls.add(self._update_hold)
        if hold is self._hold_reading:
            return
        self._hold_reading = self.watchdog.holding = hold
        if hold:
            self._pause_reading()
        else:
            self._schedule_turn()

    def pause_writing(self) -> None:
        _Writer.pause_writing(self)
        self._update_hold()

    def resume_writing(self) -> None:
        _Writer.resume_writing(self)
        self._update_hold()

    def _watch(self) -> None:
        if self.conn.closed:
            return
        if self.watchdog.expired():
            self.close()
            return
        self._watch_timer = self.loop.call_later(self.watchdog.interval, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.closed = True
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        self.watchdog.release()
        for call in list(self._calls.values()):
            if call.task is not None:
                call.task.cancel()
        if self._dispatcher is not None and self._dispatcher.task is not None:
            self._dispatcher.task.cancel()
        self.server.connection_closed(self.conn)

    # -- writes --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.coalesce:
            if self.transport is not None and not self.conn.closed:
                self.transport.write(data)
            return
        out = self._out
        out.append(data)
        if len(out) >= self._part:
            # A long batch's first half leaves at once: the client works on it while this side
            # makes the rest, instead of the two taking turns a whole batch at a time.
            _Writer._flush(self)
        elif not self._batching and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> bool:
        self._flush_scheduled = False
        return _Writer._flush(self)

    def close(self) -> None:
        if self.transport is not None and not self.conn.closed:
            if self._out:  # all of it, paused or not: the transport sends its buffer before closing
                self.transport.writelines(self._out)
                self._out.clear()
            self.conn.closed = True
            self.transport.close()

    # -- async handlers: the dispatcher and inline execution ------------------

    def run_plain(self, request: Request, entry: RegisteredHandler) -> None:
        if self.task_per_call:
            self.run_async(request, entry, None)
            return
        self._queue.append((request, entry))

    def run_async(self, request: Request, entry: RegisteredHandler, deadline: float | None) -> None:
        if request.id in self._calls:
            raise RemoteProtocolError(f"request id {request.id} reused while its call is in flight")
        call = self._calls[request.id] = _AsyncCall(request, entry, deadline)
        server = self.server
        server.calls += 1
        if len(self._calls) >= self.max_calls or server.calls >= server.options.max_calls:
            self._update_hold()
        if self.task_per_call:
            self.loop.create_task(self._run_one(call), context=self._context.copy())
            return
        self._queue.append((None, call))

    def _wake_dispatcher(self) -> None:
        parked = self._parked
        if parked is not None:
            self._parked = None
            parked.set_result(None)
        elif self._dispatcher is None:
            self._start_dispatcher()

    def _start_dispatcher(self) -> None:
        context = self._context.copy()
        d = self._dispatcher = _Dispatcher(context)
        d.task = self.loop.create_task(self._dispatch(d), context=context)

    async def _dispatch(self, d: _Dispatcher) -> None:
        """Run the queued calls in order: plain ones by awaiting their methods here, others by :meth:`_run_one`.

        A method that suspends keeps this task (cancel scopes bind to their task); if it
        stays suspended, the calls after it go to a new dispatcher (:meth:`_hand_off`).
        """
        conn, calls, loop = self.conn, self._calls, self.loop
        slot, peer = conn.slot, conn.peer
        conn.start_reading()  # in this task, current_call() reads the connection's slot, as on the reading path
        while self._dispatcher is d:
            queue = self._queue
            if not queue:
                if self._hold_reading:
                    self._update_hold()
                self._flush()
                self._parked = parked = loop.create_future()
                await parked
                continue
            self._queue = []
            self._part = max(self.split_above, (len(queue) + 1) >> 1)
            d.items = items = iter(queue)  # what a hand-off takes over: the calls this task has not reached
            self._arm_check(d)
            self._batching = True  # replies leave together at the end (or when a method suspends)
            for request, entry in items:
                if request is None:  # not a plain call
                    slot.call = None
                    if type(entry) is _AsyncCall:
                        self._batching = False
                        await self._run_one(entry)
                        self._batching = True
                        self._arm_check(d)  # it may have suspended, and the check run meanwhile
                    else:
                        assert type(entry) is _QueuedCancel
                        self._cancel_started(entry.request_id, entry.reason)
                    continue
                if calls and request.id in calls:  # the id of a call that suspended: framing is fine, the peer is not
                    self._dispatcher = None
                    self._protocol_error(
                        RemoteProtocolError(f"request id {request.id} reused while its call is in flight")
                    )
                    return
                # The slot holds the call until the next one (or the end of the batch) replaces it.
                slot.call = (request, entry.name, None, peer)  # type: ignore[union-attr]
                # AwaitableMethod.run's steps, here: its coroutine around the method would cost as
                # much again as all of this.
                m: AwaitableMethod = entry.awaitable  # type: ignore[union-attr,assignment]
                try:
                    try:
                        args = m.decode(request.payload)
                    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                        args = m.decode_again(request.payload, exc)
                    result = await m.method(*args)
                except Exception as exc:
                    conn.call_failed(request.id, entry.name, exc)  # type: ignore[union-attr]
                except asyncio.CancelledError:
                    if not self._cancelled_by_caller(d):
                        if d.blocked is None:
                            slot.call = None
                        self._batching = False
                        raise
                else:
                    try:
                        data = m.encode(result)
                    except (TypeError, ValueError, OverflowError) as exc:
                        conn.call_failed(request.id, entry.name, m.result_error(exc))  # type: ignore[union-attr]
                    else:
                        conn.reply(request.id, data, request.accept)
                finally:
                    if d.blocked is not None:
                        self._unblocked(d)
                        self._arm_check(d)
            if self._dispatcher is d:  # else this task finished a blocked call, and another has the slot
                slot.call = None
            self._batching = False

    def _arm_check(self, d: _Dispatcher) -> None:
        """Have the loop check, as soon as this task lets it go on, whether a method stopped it (:meth:`_notice_blocked`)."""
        if not d.check_scheduled:
            d.check_scheduled = True
            self.loop.call_soon(self._check_blocked, d)

    def _check_blocked(self, d: _Dispatcher) -> None:
        d.check_scheduled = False
        self._notice_blocked()

    def _notice_blocked(self) -> None:
        """If the dispatcher is stopped in a plain call's method (it suspended), give that call what a blocked call has.

        Called outside the task, before anything else can touch the call: the check
        scheduled ahead of the method runs before the method can be woken, and the reading
        path calls this first. The call gets its own ``serving_var`` in the task's context,
        a place in ``_calls`` (for cancels and reused ids), and the task leaves the queue to
        another dispatcher after ``inline_handler_duration``.
        """
        # Outside any task, the slot holds a call only while the method of the reading
        # dispatcher's plain call is suspended: the reading path and the slow path empty it.
        serving, d = self.conn.slot.call, self._dispatcher
        if serving is None or d is None or d.blocked is not None:
            return
        request = serving[0]
        entry: RegisteredHandler = self.conn.find_handler(request.method_key)  # type: ignore[assignment]
        call = d.blocked = self._calls[request.id] = _AsyncCall(request, entry, None)
        call.task = d.task
        server = self.server
        server.calls += 1
        if len(self._calls) >= self.max_calls or server.calls >= server.options.max_calls:
            self._update_hold()
        d.context.run(serving_var.set, serving)
        self._current = call
        self._batching = False  # the replies the task made before go now, and any made meanwhile
        self._on_block(d.task)

    def _unblocked(self, d: _Dispatcher) -> None:
        """The plain call ``d`` noticed blocked has ended."""
        call = d.blocked
        assert call is not None
        d.blocked = None
        self._call_finished(call.request.id)
        for timer in call.timers:
            timer.cancel()
        self.conn.start_reading()  # the call's own serving_var is done with: back to the slot
        self._batching = True  # the task goes on with its batch

    def _cancelled_by_caller(self, d: _Dispatcher) -> bool:
        """A plain call's method was cancelled: answer it if the cancel was the call's, not the connection's."""
        call = d.blocked
        task = d.task
        assert task is not None
        if call is None or call.reason is None or task.uncancel() > 0:
            return False  # not ours: the connection or the server is going away
        self.conn.fail(call.request.id, call.reason)
        return True

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        self.conn.protocol_error(exc)
        self.close()

    async def _run_one(self, call: _AsyncCall) -> None:
        request = call.request
        if call.reason is None and call.deadline is not None and self.loop.time() >= call.deadline:
            call.reason = DeadlineExceeded(f"{call.entry.name}: deadline passed while the call waited its turn")
        if call.reason is not None:  # cancelled before it started
            self._call_finished(request.id)
            self.conn.fail(request.id, call.reason)
            return
        self._current = call
        try:
            if call.deadline is None:
                await self.conn.call_async(request, call.entry, None, self._on_block)
            else:
                # An anyio scope rather than a timer of our own: anyio code in the handler (its
                # current_effective_deadline(), a library's timeouts) sees the call's deadline.
                with anyio.CancelScope(deadline=call.deadline) as scope:
                    await self.conn.call_async(request, call.entry, call.deadline, self._on_block)
                if scope.cancelled_caught and call.reason is None:
                    self.conn.fail(request.id, DeadlineExceeded(f"{call.entry.name}: deadline exceeded"))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            if call.reason is None or task.uncancel() > 0:
                raise  # not ours: the connection or the server is going away
            self.conn.fail(request.id, call.reason)
        finally:
            self._call_finished(request.id)
            for timer in call.timers:
                timer.cancel()

    def _call_finished(self, request_id: int) -> None:
        del self._calls[request_id]
        self.server.call_finished()
        if self._hold_reading:
            self._update_hold()

    def _on_block(self, task: asyncio.Task[Any] | None = None) -> None:
        # The handler of ``self._current`` suspended for the first time, on ``task`` (else the current task).
        call = self._current
        assert call is not None
        self.conn.left_the_loop()
        if task is None:
            task = asyncio.current_task()
            assert task is not None
        call.task = task
        self._flush()  # replies already made must not wait for this handler
        d = self._dispatcher
        if d is not None and d.task is task:
            if self.inline_duration == 0:
                self._hand_off(task)
            else:
                call.timers.append(self.loop.call_later(self.inline_duration, self._hand_off, task))

    def _hand_off(self, task: asyncio.Task[Any]) -> None:
        d = self._dispatcher
        if d is not None and d.task is task:
            self._dispatcher = None
            self._queue[:0] = d.items  # the calls it had taken and not reached go first
            if self._queue and not self.conn.closed:
                self._start_dispatcher()

    def cancel_running(self, request_id: int, reason: RemoteError) -> None:
        call = self._calls.get(request_id)
        if call is None:
            if self._queue or self._dispatcher is not None:  # perhaps a plain call not started: cancelled once it is
                self._queue.append((None, _QueuedCancel(request_id, reason)))
            return
        self._cancel(call, reason)

    def _cancel_started(self, request_id: int, reason: RemoteError) -> None:
        call = self._calls.get(request_id)
        if call is not None:
            self._cancel(call, reason)

    def _cancel(self, call: _AsyncCall, reason: RemoteError) -> None:
        if call.reason is not None:
            return  # already being cancelled
        call.reason = reason
        if call.task is not None:  # blocked: cancel it on its task
            self._hand_off(call.task)
            call.task.cancel()
        # Otherwise it has not started; _run_one fails it when its turn comes.


class ClientProtocol(_Writer):
    """One client socket on the asyncio fast path (the :class:`ClientIO` of its session)."""

    def __init__(self, endpoint: Endpoint, options: ClientOptions) -> None:
        _Writer.__init__(self)
        self.loop = asyncio.get_running_loop()
        self.session = session = ClientSession(endpoint, options, self)
        session.now = self.loop.time
        session.new_waiter = self.loop.create_future  # no Python frame per call
        self.flatten_limit = session.flatten_limit
        self.decoder = FrameDecoder(options.max_frame_size, expect="hello_reply")
        self.coalesce = options.coalesce_writes
        self._hello = client_hello(options)
        # Flushes queued on the loop: while one is, requests are held for it.
        self._flushes_queued = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._attach(transport)
        self.transport.write(self._hello)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        session = self.session
        session.last_received = self.loop.time()
        decoder = self.decoder
        decoder.receive_data(data)
        calls = session.calls
        woken = 0
        try:
            frames = decoder.frames()
            while frames:
                for frame in frames:
                    if type(frame) is Response:  # frame_received's first case, inlined for the common frame
                        waiter = calls.pop(frame.id, None)
                        if waiter is not None:
                            if not waiter.done():  # a caller cancelled an instant ago
                                waiter.set_result(frame.payload)
                                woken += 1
                            if session._idle is not None:
                                session._call_done()
                    else:
                        session.frame_received(frame)
                frames = decoder.frames() if decoder.more else []
        except RemoteProtocolError as exc:
            self.abort(exc)
            return
        if woken > 1 and self.coalesce:
            # The callers just woken run in the next loop iteration, and most make their next
            # call there: hold those requests for one write after them. This flush is queued
            # behind their wake-ups, so it runs in the same iteration, right after them (one
            # queued earlier would run before them). Were the first of them taken for a lone
            # call and written at once, the server would wake for it alone and the rest would
            # follow in a second write. One caller woken is either alone, and written at
            # once, or held because others are in flight.
            self._flush_later()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.session.connection_lost(exc)

    def send(self, request_id: int, header: bytes, payload: bytes) -> None:
        if len(payload) > self.flatten_limit:
            # A large payload gains nothing from waiting (it is its own buffer either way) and
            # the server can start reading it while later requests are being made. What is
            # held goes with it, first: frames keep their order.
            self._out += (header, payload)
            self._flush()
        elif self._flushes_queued or (self.coalesce and len(self.session.calls) > 1):
            # Other calls are in flight: replies arriving in this loop iteration may wake more
            # callers, so every request of the iteration leaves in one write at its end. (Had
            # this one been written at once, the server could wake and answer it alone.)
            self._out.append(header + payload)
            if not self._flushes_queued:
                self._flush_later()
        else:
            self._write_now(header + payload)

    def write(self, data: bytes) -> None:
        if self._flushes_queued:
            self._out.append(data)
        else:
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        if self._paused:
            self._out.append(data)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.session.mark_sent()

    def _flush_later(self) -> None:
        self._flushes_queued += 1
        self.loop.call_soon(self._queued_flush)

    def _queued_flush(self) -> None:
        self._flushes_queued -= 1
        self._flush()

    def _flush(self) -> bool:
        if not _Writer._flush(self):
            return False
        # Counted as sent even if the transport paused us part-way: a request thought sent is
        # only not retried, one thought unsent could be run twice.
        self.session.mark_sent()
        return True

    def abort(self, error: BaseException) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.session.connection_lost(error)

    def close(self) -> None:
        """The client is done with the connection: its calls fail, and the socket closes.

        With nothing left to write, the transport's close ends the connection cleanly (a TLS
        ``close_notify``, which strict peers expect, then FIN); with bytes still held for a
        peer that does not read, it is aborted rather than kept open for them.
        """
        closed = CommunicationError("connection closed by the client")
        transport = self.transport
        if transport is not None and not self._out and not transport.get_write_buffer_size():
            transport.close()
            self.session.connection_lost(closed)
        else:
            self.abort(closed)


class ProtocolTransport(Transport):
    """TCP and Unix sockets through asyncio Protocols: the fast path (uvloop's when it runs the loop)."""

    @asynccontextmanager
    async def listen(self, endpoint: Endpoint, server: Server, conn_tg: TaskGroup) -> AsyncIterator[Endpoint]:
        if server.options.tls is not None:
            async with self._listen_tls(endpoint, server) as bound:
                yield bound
            return
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            return ServerProtocol(server)

        file: UnixSocketFile | None = None  # a Unix socket's, removed when we stop listening
        if endpoint.scheme == "tcp":
            srv = await loop.create_server(
                factory,
                endpoint.host,
                endpoint.port,
                reuse_address=True,
                reuse_port=server.options.reuse_port or None,
                backlog=server.options.backlog,
            )
            sockname = srv.sockets[0].getsockname()
            host = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
            bound = Endpoint("tcp", f"{host}:{sockname[1]}")
        else:
            # Bound by callrt, not by the loop, which would take over a path another server listens on.
            sock, file = bind_unix(endpoint, server.options.backlog)
            try:
                srv = await loop.create_unix_server(factory, sock=sock, backlog=server.options.backlog)
            except BaseException:
                sock.close()
                file.remove()
                raise
            bound = endpoint
        try:
            yield bound
        finally:
            srv.close()  # stop accepting; live connections are drained by the server
            if file is not None:
                file.remove()

    @asynccontextmanager
    async def _listen_tls(self, endpoint: Endpoint, server: Server) -> AsyncIterator[Endpoint]:
        # TLS: callrt accepts (a TLSListener per listening socket, _tls): OpenSSL reads the socket
        # from the first byte, each handshake is counted in max_connections and bounded by the
        # handshake timeout, and the connection then runs on a TLSSocketTransport.
        tls = server.options.tls
        assert tls is not None
        file: UnixSocketFile | None = None
        listener: Any = None
        if endpoint.scheme == "tcp":
            # anyio binds as the loop would (every address of the host, reuse, dual stack); its
            # sockets are then accepted on here, never through anyio.
            listener, bound = await bind_tcp(endpoint, server.options)
            socks = [one.extra(SocketAttribute.raw_socket) for one in listener.listeners]
        else:
            sock, file = bind_unix(endpoint, server.options.backlog)
            socks = [sock]
            bound = endpoint
        acceptors: list[TLSListener] = []
        try:
            acceptors.extend(TLSListener(sock, server, tls, lambda: ServerProtocol(server)) for sock in socks)
            yield bound
        finally:
            for acceptor in acceptors:
                acceptor.close()  # stop accepting; live connections are drained by the server
            if listener is not None:
                with anyio.CancelScope(shield=True):
                    await listener.aclose()
            else:
                for sock in socks:
                    sock.close()
            if file is not None:
                file.remove()

    @asynccontextmanager
    async def connect(self, endpoint: Endpoint, options: ClientOptions) -> AsyncIterator[ClientSession]:
        loop = asyncio.get_running_loop()
        protocol: ClientProtocol | None = None

        def factory() -> ClientProtocol:
            nonlocal protocol
            protocol = ClientProtocol(endpoint, options)
            return protocol

        with connect_errors(endpoint, options):
            if options.tls is not None:  # a TLSSocketTransport (_tls), handshaken before the protocol starts
                await connect_tls(endpoint, options.tls, tls_server_name(endpoint, options), factory)
            elif endpoint.scheme == "tcp":
                await loop.create_connection(factory, endpoint.host, endpoint.port)
            else:
                await loop.create_unix_connection(factory, endpoint.address)
        assert protocol is not None
        await handshake(protocol.session, endpoint, options)
        try:
            yield protocol.session
        finally:
            protocol.close()


__all__ = ("ClientProtocol", "ProtocolTransport", "ServerProtocol")
