"""Fan-out, psrpc's multi-RPC: one call sent to every replica, replies yielded as they arrive.

``client.multi(Cls)`` gives a stub whose methods return :class:`Replies`, an
async iterator of :class:`Reply` records, one per replica, in the order the
replicas answer::

    async for reply in client.multi(RoomsAPI).count("lobby"):
        print(reply.endpoint, reply.value if reply.error is None else reply.error)

Each replica gets the ordinary unary request on the session the client already
holds for it (no new connection, no wire change). What each replica the client
knows when the iteration starts yields:

- AVAILABLE: its result, or its error (as a unary call would raise it, declared
  exceptions rebuilt);
- CONNECTING (or not tried yet, or reconnecting after a lost connection): it is
  waited for, up to the fan-out's deadline (``pick_timeout`` without one), then
  called; if its connection attempt fails, an ``Unreachable`` saying why;
- UNAVAILABLE because its last connection attempt failed, or DRAINING: an
  ``Unreachable`` saying so, at once; it is not waited for;
- no answer by the fan-out's deadline: ``DeadlineExceeded`` (``NoReplicaInTime``
  if it was still connecting).

The deadline is the caller's (ended a moment early, as a unary call's wait for a
replica is, so the iteration reports the late replicas instead of being cut off
by the caller's own scope) or ``timeout=``, whichever comes first; it travels
with each request, so the replicas stop working at it too. ``expected=N`` ends
the iteration after N successful replies. Ending the iteration early (``break``,
``aclose()``, leaving ``async with``, cancellation, ``expected``) cancels the
requests still outstanding. There are no retries: a replica's communication
error is its record. The client's interceptors run once per replica's request.

Once an SDK is configured, each replica's request is a call of its own: a
CLIENT span (with that replica's ``server.address``, ``server.port`` and
``network.transport``; the replica's SERVER span is its child) and the client's
measurements. The spans start together when the fan-out starts, in the caller's
context, so they are siblings under the caller's current span; a request the
fan-out's end cancelled has ``error.type`` ``cancelled`` (or
``callrt.errors.DeadlineExceeded`` when the deadline ended it).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import telemetry
from ..component import MethodSpec, caller_error, component_spec
from ..connection.client import ClientSession
from ..context import CallOptions, current_deadline, serving_var
from ..endpoints import Endpoint
from ..errors import (
    ClosedError,
    DeadlineExceeded,
    ErrorCode,
    NoReplicaInTime,
    RemoteError,
    Unreachable,
)
from ..interceptors import ClientCall, ClientInterceptor, intercept_client
from ..protocol import TraceContext
from ..telemetry import CallRecord
from ..tracing import client_trace, current_otel_context
from .replicas import ManagedReplica, ReplicaSet, ReplicaState

__all__ = (
    "Multi",
    "Replies",
    "Reply",
    "call_limits",
    "call_replica",
    "check_multi_arguments",
    "reply_of",
    "session_of",
)

R = TypeVar("R")
# How a fan-out stub's method makes its Replies: (method, payload, args, kwargs).
_MakeReplies = Callable[[MethodSpec, bytes, tuple[Any, ...], dict[str, Any]], "Replies[Any]"]
# How long before the caller's deadline a fan-out (or an affinity call's claim round) stops
# waiting, at most: a unary call's wait for a replica stops up to 50 ms early (DEADLINE_MARGIN),
# but here the caller's task must still wake, make the late replicas' records and finish its
# loop before its own scope expires, and a loaded machine (tests on 2 vCPUs beside other work)
# descheduled it for longer than 50 ms.
END_MARGIN = 0.2
_NO_SCOPE = contextlib.nullcontext()  # instead of a cancel scope with no deadline (they cost per use)


@dataclass(frozen=True, slots=True)
class Reply(Generic[R]):
    """What one replica answered to a fan-out: ``value`` or ``error`` (exactly one is meaningful).

    :ivar endpoint: the replica.
    :ivar value: its result, when ``error`` is None.
    :ivar error: what a unary call to it would have raised, or why it was not asked.
    """

    endpoint: Endpoint
    value: R | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """Whether the replica answered with a result."""
        return self.error is None

    def result(self) -> R:
        """The replica's result; raises its error instead if it failed."""
        if self.error is not None:
            raise self.error
        return cast(R, self.value)


async def call_replica(
    session: ClientSession,
    method: MethodSpec,
    payload: bytes,
    deadline: float,
    trace: TraceContext | None,
    options: CallOptions | None,
) -> Any:
    """One request of ``method`` on ``session``, no retry; raises what a stub's call would.

    Cancelled while waiting, it gives the call up (the server gets a cancel, unless the
    deadline already passed: the server enforces that itself).
    """
    request_id, waiter = session.start(method.key, payload, deadline, trace, options)
    return await reply_of(session, method, request_id, waiter, deadline)


async def reply_of(session: ClientSession, method: MethodSpec, request_id: int, waiter: Any, deadline: float) -> Any:
    """The result of the request ``session.start`` sent as ``request_id``: :func:`call_replica`'s second half."""
    try:
        try:
            raw = await waiter
        except BaseException:
            session.give_up(request_id, deadline)
            raise
    except RemoteError as exc:
        error = caller_error(method, exc)
        if error is exc:
            raise
        raise error from exc
    try:
        return method.decode_result(raw)
    except Exception as exc:  # msgspec.ValidationError/DecodeError
        raise RemoteError(
            f"{method.full_name}: result does not match the return type: {exc}", code=ErrorCode.MALFORMED_RESPONSE
        ) from None


async def session_of(
    replicas: ReplicaSet, replica: ManagedReplica, method: str, limit: float, *, by_deadline: bool = True
) -> ClientSession:
    """``replica``'s session once it is AVAILABLE, waiting while it is CONNECTING until ``limit``.

    :raises Unreachable: it is UNAVAILABLE, NOT_SERVING or DRAINING, or stopped connecting without success;
        or, when ``limit`` is not a deadline (``by_deadline=False``: ``pick_timeout``), still connecting at it.
    :raises NoReplicaInTime: it was still connecting at ``limit``, a deadline.
    """
    while True:
        state, session = replica.state, replica.session
        if state is ReplicaState.AVAILABLE and session is not None:
            return session
        if replicas.closed:
            raise ClosedError("the connection is closed")
        if (
            state is ReplicaState.DRAINING
            or state is ReplicaState.NOT_SERVING
            or (state is ReplicaState.UNAVAILABLE and replica.last_error is not None)
        ):
            # Skipped, not waited for: it is leaving, its health check says it serves nothing now, or
            # its last connection attempt failed (it backs off before the next). UNAVAILABLE without an error is a replica not tried yet, or one
            # whose connection was lost and that is about to reconnect: waited for, like CONNECTING.
            raise Unreachable(f"{method}: {replica.endpoint} is {state.value}{replica.why()}")
        # Every state change of every replica sets this event (ReplicaSet.changed), then replaces it.
        changed = replicas._changed
        with anyio.move_on_at(limit):
            await changed.wait()
            continue
        if not by_deadline:
            raise Unreachable(f"{method}: {replica.endpoint} was still connecting after pick_timeout{replica.why()}")
        raise NoReplicaInTime(f"{method}: {replica.endpoint} was still connecting at the deadline{replica.why()}")


def call_limits(effective_deadline: Callable[[], float], timeout: float | None) -> tuple[float, float]:
    """``(deadline, end)`` for a call made now: the caller's deadline, and when waiting for replicas stops.

    ``end`` is the earlier of ``timeout`` from now and a moment before the caller's
    deadline (a tenth of the time left, at most :data:`END_MARGIN`), so that the caller
    learns which replicas were late before its own scope expires. A call made from a
    handler inherits the handler's deadline.
    """
    deadline = effective_deadline()
    if serving_var.get() is not None:
        inherited = current_deadline()
        if inherited is not None and inherited < deadline:
            deadline = inherited
    now = anyio.current_time()
    end = math.inf if timeout is None else now + timeout
    if not math.isinf(deadline):
        end = min(end, deadline - min(END_MARGIN, max(deadline - now, 0.0) / 10))
    return deadline, end


class Replies(Generic[R]):
    """The replies of one fan-out, as they arrive: ``async for reply in replies``.

    The requests leave when the iteration starts (the first ``__anext__``), under the
    caller's deadline at that moment. Ending early (``break``, :meth:`aclose`, leaving
    ``async with replies``, a cancelled ``__anext__``) cancels what is outstanding.
    """

    def __init__(
        self,
        replicas: ReplicaSet,
        task_group: TaskGroup,
        effective_deadline: Callable[[], float],
        method: MethodSpec,
        payload: bytes,
        *,
        expected: int | None,
        timeout: float | None,
        options: CallOptions | None,
        pick_timeout: float,
        interceptors: Sequence[ClientInterceptor] = (),
        call_args: tuple[tuple[Any, ...], dict[str, Any]] = ((), {}),
    ) -> None:
        self._replicas = replicas
        self._task_group = task_group
        self._effective_deadline = effective_deadline
        self._method = method
        self._payload = payload
        self._expected = expected
        self._timeout = timeout
        self._options = options
        self._pick_timeout = pick_timeout
        # With client interceptors, each replica's request runs their chain (the caller's
        # arguments are what the chain sees; the request is encoded from what it passes on).
        self._interceptors = tuple(interceptors)
        self._call_args = call_args
        self._scopes: list[anyio.CancelScope] = []
        self._pending: dict[Endpoint, ManagedReplica] = {}  # the replicas whose record has not come yet
        self._late: list[Reply[R]] = []  # records made when the end came, still to be yielded
        self._end = math.inf
        self._started = 0.0
        self._receive: MemoryObjectReceiveStream[Reply[R]] | None = None
        self._results = 0
        self._finished = False
        self._thread = threading.get_ident()

    def __repr__(self) -> str:
        return f"<Replies of {self._method.full_name} fan-out>"

    def __aiter__(self) -> Replies[R]:
        return self

    async def __anext__(self) -> Reply[R]:
        if self._late:
            return self._late.pop(0)
        if self._finished:
            raise StopAsyncIteration
        receive = self._receive
        if receive is None:
            await anyio.lowlevel.checkpoint_if_cancelled()  # the caller's cancellation, not requests
            receive = self._start()
        try:
            with anyio.move_on_at(self._end) if self._end != math.inf else _NO_SCOPE:
                try:
                    reply = await receive.receive()
                except anyio.EndOfStream:
                    self._finish()
                    raise StopAsyncIteration from None
                self._pending.pop(reply.endpoint, None)
                self._count(reply)
                return reply
        except BaseException:
            self._finish()  # cancelled (or the caller's deadline): the fan-out is over
            raise
        # The end came: the records still to come are made here, in the caller's task, rather
        # than waited for from the replicas' tasks, which a loaded loop may run late.
        self._late = self._at_end(receive)
        if not self._late:
            raise StopAsyncIteration
        return self._late.pop(0)

    @staticmethod
    def _over(end: float) -> bool:
        return end != math.inf and anyio.current_time() >= end

    def _late_error(self, replica: ManagedReplica) -> Exception:
        """What a replica that had not answered by the fan-out's end is recorded with."""
        name, waited = self._method.full_name, self._end - self._started
        if replica.state is ReplicaState.AVAILABLE:
            return DeadlineExceeded(
                f"{name}: no reply from {replica.endpoint} within the fan-out's deadline ({waited:.3g} s)"
            )
        return NoReplicaInTime(f"{name}: {replica.endpoint} was {replica.state.value} at the deadline")

    def _count(self, reply: Reply[R]) -> None:
        if reply.error is None:
            self._results += 1
            if self._expected is not None and self._results >= self._expected:
                self._finish()  # enough: cancel the rest now, not when the caller asks again

    def _at_end(self, receive: MemoryObjectReceiveStream[Reply[R]]) -> list[Reply[R]]:
        """The records left when the fan-out's end comes: those already delivered, then the late replicas'."""
        records: list[Reply[R]] = []
        while not self._finished:
            try:
                reply = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            self._pending.pop(reply.endpoint, None)
            records.append(reply)
            self._count(reply)
        if not self._finished:
            records.extend(
                Reply(replica.endpoint, error=self._late_error(replica)) for replica in self._pending.values()
            )
        self._finish()
        return records

    async def aclose(self) -> None:
        """End the fan-out: outstanding requests are cancelled."""
        self._finish()

    async def __aenter__(self) -> Replies[R]:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish()

    def __del__(self) -> None:
        # A ``break`` out of ``async for`` drops the last reference at once (CPython): cancel then.
        # Only on the loop's thread; a collection elsewhere leaves the requests to their deadline.
        if not self._finished and self._receive is not None and threading.get_ident() == self._thread:
            try:
                self._finish()
            except Exception:
                pass  # the loop is gone (interpreter shutdown): so are the requests

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        for scope in self._scopes:
            scope.cancel()
        if self._receive is not None:
            self._receive.close()

    def _start(self) -> MemoryObjectReceiveStream[Reply[R]]:
        replicas, name = self._replicas, self._method.full_name
        if replicas.closed:
            raise ClosedError("the connection is closed")
        targets = list(replicas.replicas.values())
        if not targets:
            raise replicas.unreachable(name)
        # The end, not the caller's deadline, travels: the replicas stop when we stop waiting.
        _, end = call_limits(self._effective_deadline, self._timeout)
        self._end, self._started = end, anyio.current_time()
        self._pending = {replica.endpoint: replica for replica in targets}
        trace = client_trace() if current_otel_context() else None
        # Room for every record: a task never waits to deliver one.
        send, receive = anyio.create_memory_object_stream[Reply[R]](len(targets))
        self._receive = receive
        method, payload, options = self._method, self._payload, self._options
        with send:
            for replica in targets:
                # Each request's CLIENT span starts here, in the caller's context (the replicas'
                # tasks run in the client's): siblings under the caller's current span.
                record = telemetry.client_record(name, len(payload))
                to_send = trace if record is None else record.replica(replica.endpoint)
                # The requests to connected replicas leave now, from the caller's task; a task per
                # replica only waits for its reply (or for the replica to connect, then calls).
                sent: tuple[ClientSession, int, Any] | None = None
                session = replica.session
                if replica.state is ReplicaState.AVAILABLE and session is not None and not self._interceptors:
                    try:
                        sent = (session, *session.start(method.key, payload, end, to_send, options))
                    except Exception as exc:  # the connection just closed; a request over the peer's frame size
                        self._pending.pop(replica.endpoint, None)
                        send.send_nowait(Reply(replica.endpoint, error=exc))
                        if record is not None:
                            telemetry.end_client_call(record, exc)
                        continue
                scope = anyio.CancelScope()
                self._scopes.append(scope)
                self._task_group.start_soon(self._ask, replica, sent, scope, send.clone(), end, to_send, record)
        return receive

    async def _ask(
        self,
        replica: ManagedReplica,
        sent: tuple[ClientSession, int, Any] | None,
        scope: anyio.CancelScope,
        send: MemoryObjectSendStream[Reply[R]],
        end: float,
        trace: TraceContext | None,
        record: CallRecord | None,
    ) -> None:
        with send, scope:
            try:
                reply: Reply[R] = await self._reply_of(replica, sent, end, trace)
            except BaseException as exc:  # cancelled: the fan-out ended (break, expected, its end)
                if record is not None:
                    telemetry.end_client_call(record, self._late_error(replica) if self._over(end) else exc)
                raise
            if record is not None:
                telemetry.end_client_call(record, reply.error)
            self._scopes.remove(scope)  # nothing left to cancel here
            try:
                send.send_nowait(reply)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the caller stopped iterating

    async def _reply_of(
        self,
        replica: ManagedReplica,
        sent: tuple[ClientSession, int, Any] | None,
        end: float,
        trace: TraceContext | None,
    ) -> Reply[R]:
        method, endpoint, started = self._method, replica.endpoint, self._started
        try:
            with anyio.move_on_at(end) if end != math.inf else _NO_SCOPE:
                if sent is not None:
                    session, request_id, waiter = sent
                    return Reply(endpoint, await reply_of(session, method, request_id, waiter, end))
                if self._interceptors:
                    args, kwargs = self._call_args
                    chain = intercept_client(
                        self._interceptors,
                        method.full_name,
                        self._options,
                        lambda: end,  # the chain's ClientCall.deadline: the fan-out's end
                        lambda call: self._attempt(replica, end, trace, call),
                    )
                    return Reply(endpoint, await chain(*args, **kwargs))
                value = await self._attempt(replica, end, trace, None)
                return Reply(endpoint, value)
        except Exception as exc:
            return Reply(endpoint, error=exc)
        waited = end - started
        return Reply(
            endpoint,
            error=DeadlineExceeded(
                f"{method.full_name}: no reply from {endpoint} within the fan-out's deadline ({waited:.3g} s)"
            ),
        )

    async def _attempt(
        self, replica: ManagedReplica, end: float, trace: TraceContext | None, call: ClientCall | None
    ) -> Any:
        """The request to ``replica`` (once it is connected), as the interceptors' chain passes it on, if any."""
        method = self._method
        by_deadline = not math.isinf(end)  # without one, a replica is waited for pick_timeout
        limit = end if by_deadline else self._started + self._pick_timeout
        session = await session_of(self._replicas, replica, method.full_name, limit, by_deadline=by_deadline)
        if call is None:
            return await call_replica(session, method, self._payload, end, trace, self._options)
        call.replica = str(replica.endpoint)
        payload = method.payload_from_args(call.args, call.kwargs)
        return await call_replica(session, method, payload, end, trace, call.options)


class Multi:
    """A fan-out stub: ``multi.method(*args)`` gives the :class:`Replies` of every replica.

    Made by :meth:`callrt.call.Client.multi`. Its methods are typed loosely (any arguments,
    ``Replies[Any]``); each value is decoded with the method's return type at run time.
    """

    def __init__(self, cls: Callable[..., Any], make: _MakeReplies) -> None:
        spec = component_spec(cls)
        self._name = spec.name
        for method in spec.methods.values():
            setattr(self, method.name, _fan_out_method(method, make))

    def __repr__(self) -> str:
        return f"<{self._name} fan-out stub>"

    def __getattr__(self, name: str) -> Callable[..., Replies[Any]]:
        # Only for names that are not methods (the methods are set as attributes).
        raise AttributeError(f"{self._name} has no method {name!r}")


def _fan_out_method(method: MethodSpec, make: _MakeReplies) -> Callable[..., Replies[Any]]:
    def fan_out(*args: Any, **kwargs: Any) -> Replies[Any]:
        if method.stream is not None:
            raise TypeError(f"{method.full_name} is a stream method: fan-out sends unary calls only")
        # Encoded now: a bad argument fails here, naming it, not in every replica's record.
        return make(method, method.payload_from_args(args, kwargs), args, kwargs)

    fan_out.__name__ = method.name
    fan_out.__qualname__ = f"{method.full_name} (fan-out)"
    fan_out.__signature__ = method.signature  # type: ignore[attr-defined]
    return fan_out


def _check_expected(expected: int | None) -> None:
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 1):
        raise ValueError(f"expected must be a positive number of replies, or None for all, not {expected!r}")


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, or None, not {timeout!r}")


def check_multi_arguments(expected: int | None, timeout: float | None) -> None:
    """What ``client.multi(...)`` checks before making a stub."""
    _check_expected(expected)
    _check_timeout(timeout)
