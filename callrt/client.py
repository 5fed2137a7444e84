"""The client: replicas found by a resolver, picked by a balancer, called through typed stubs.

Theory of operation
-------------------
``connect(resolver)`` gives a :class:`Connection`. It watches the resolver and
keeps one :class:`Replica` per endpoint. Each replica has one task that owns
its lifecycle, and its state lives in :attr:`Replica.state` and nowhere else;
every change goes through :meth:`Replica.set_state`, which checks it against
:data:`TRANSITIONS` and keeps the balancer in step (only AVAILABLE replicas
are in the balancer)::

    CONNECTING ──handshake done──▶ AVAILABLE ◀──address back──┐
        ▲   │                          │                         │
        │   │                          └──goaway / removed──▶ DRAINING
        │   └──failed──▶ UNAVAILABLE ◀──lost / keepalive failed──┘ │
        └──────backoff────────┘        ◀──drained: calls done, closed─┘

A replica's socket is a :class:`ClientSession`: protocol logic (call table,
frame handling, cancel) shared by both transport shells. A failure of one
session fails only that session's calls and never another session of the
same address: each session is its own object with its own call table.

*Retries.* A call that fails with a communication error is retried on a new
pick with capped, jittered backoff, within its deadline and a retry budget.
A ``@not_retriable`` method is retried only when the request provably never
left the client (no replica, or the connection died before the frame was
handed to the socket).
"""

from __future__ import annotations

import enum
import inspect
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup

from ._deadline import deadline_function
from .balancers import Balancer, RoundRobin
from .component import MethodSpec, component_spec
from .endpoints import Endpoint
from .errors import (
    CallrtError,
    ClosedError,
    CommunicationError,
    ErrorCode,
    LocalProtocolError,
    RemoteError,
    Unreachable,
    remote_error,
)
from .options import CallOptions, ClientOptions, RetryPolicy
from .protocol import (
    HEADER_SIZE,
    Cancel,
    Error,
    GoAway,
    HelloReply,
    Ping,
    Pong,
    Response,
    TraceContext,
    encode_frame,
    encode_plain_request_header,
    encode_request_header,
)
from .resolvers import Resolver, Version
from .server import current_deadline, serving_var
from .tracing import client_trace, current_otel_context

__all__ = ("ClientSession", "Connection", "Replica", "ReplicaState", "TRANSITIONS", "connect")

T = TypeVar("T")


_MAX_DEADLINE_US = (1 << 64) - 1  # the protocol's u64 field
_MAX_DEADLINE_S = 1e12  # beyond it (31,000 years), the field's maximum: "no limit"
_INF = math.inf


class ReplicaState(enum.Enum):
    CONNECTING = "connecting"
    AVAILABLE = "available"
    DRAINING = "draining"
    UNAVAILABLE = "unavailable"


TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.CONNECTING: frozenset({ReplicaState.AVAILABLE, ReplicaState.UNAVAILABLE}),
    ReplicaState.AVAILABLE: frozenset({ReplicaState.DRAINING, ReplicaState.UNAVAILABLE}),
    ReplicaState.DRAINING: frozenset({ReplicaState.AVAILABLE, ReplicaState.UNAVAILABLE}),
    ReplicaState.UNAVAILABLE: frozenset({ReplicaState.CONNECTING}),
}


class SessionLost(CommunicationError):
    """Raised for calls on a session that failed; ``sent`` tells whether the request left us."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


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
    """Protocol logic of one client socket. Shells subclass it and supply I/O.

    Subclasses implement :meth:`send` (write a request, coalescing as they
    like, calling :meth:`mark_sent` when what they held back is handed to the socket), :meth:`write`,
    :meth:`new_waiter` and :meth:`abort`.
    """

    def __init__(self, endpoint: Endpoint, options: ClientOptions) -> None:
        self.endpoint = endpoint
        self.options = options
        self.calls: dict[int, Any] = {}
        # Every request with a smaller id has been handed to the socket; shells hold requests
        # back only in id order, so the ones at or above it are exactly those still held.
        self.sent_below = 1
        self.next_id = 1
        self.peer_max_frame = options.max_frame_size
        self.flatten_limit = options.write_flatten_limit
        self.ready = anyio.Event()  # hello reply received
        self.lost = anyio.Event()  # socket gone
        self.goaway = anyio.Event()  # server draining
        self._idle: anyio.Event | None = None  # set when the last call finishes, if someone waits
        self.error: BaseException | None = None
        self.is_lost = False  # ``lost`` as a plain flag, for the per-call check
        self.caller = options.caller
        self.last_received = time.monotonic()
        self.on_lost: Callable[[], None] | None = None  # called once, when the socket is gone
        # anyio.current_time(), or the loop's own clock when a shell has one (the same clock,
        # without finding the backend on every call).
        self.now: Callable[[], float] = anyio.current_time

    # -- hooks for shells ----------------------------------------------------

    def send(self, request_id: int, header: bytes, payload: bytes) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def mark_sent(self) -> None:
        """Everything held back so far was handed to the socket."""
        self.sent_below = self.next_id

    def new_waiter(self) -> Any:  # the asyncio shell replaces it with its loop's create_future
        return EventWaiter()

    def abort(self, error: BaseException) -> None:
        """Close the socket now; calls fail with ``error``'s message."""
        raise NotImplementedError

    # -- protocol ------------------------------------------------------------

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
                    waiter.set_exception(remote_error(ErrorCode.parse(f.code), f.remote_type, f.message, f.traceback))
                self._call_done()
        elif kind is Pong or kind is HelloReply:
            if kind is HelloReply:
                self._hello_reply(frame)  # type: ignore[arg-type]
        elif kind is Ping:
            self.write(encode_frame(Pong(frame.id)))  # type: ignore[attr-defined]
        elif kind is GoAway:
            self.goaway.set()
        else:
            from .errors import RemoteProtocolError

            raise RemoteProtocolError(f"a server may not send {kind.__name__} frames")

    def _hello_reply(self, reply: HelloReply) -> None:
        if reply.version == 0:
            from .errors import RemoteProtocolError

            raise RemoteProtocolError("the server speaks no protocol version we do")
        self.peer_max_frame = reply.max_frame_size
        self.ready.set()

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
        self, key: bytes, payload: bytes, deadline: float, trace: TraceContext | None, options: CallOptions | None
    ) -> tuple[int, Any]:
        """Send one request; returns its id and the waiter its reply will resolve.

        ``deadline`` is in ``anyio.current_time()`` terms, ``inf`` for none.
        """
        if self.is_lost:
            raise SessionLost(f"connection to {self.endpoint} is closed", sent=False)
        request_id = self.next_id
        self.next_id = request_id + 1
        size = len(payload)
        if deadline == _INF:
            deadline_us = None
        else:
            left = deadline - self.now()
            # -inf is a caller whose scope is already cancelled: the time left is none.
            deadline_us = int(left * 1e6) if 0 < left < _MAX_DEADLINE_S else 0 if left <= 0 else _MAX_DEADLINE_US
        if trace is None and options is None and not self.caller:
            header = encode_plain_request_header(request_id, key, size, deadline_us)
        else:
            header = self._full_header(request_id, key, size, deadline_us, trace, options)
        if len(header) - HEADER_SIZE + size > self.peer_max_frame:
            raise LocalProtocolError(
                f"request of {size} bytes exceeds the server's maximum frame of {self.peer_max_frame}"
            )
        self.calls[request_id] = waiter = self.new_waiter()
        self.send(request_id, header, payload)
        return request_id, waiter

    def _full_header(
        self,
        request_id: int,
        key: bytes,
        size: int,
        deadline_us: int | None,
        trace: TraceContext | None,
        options: CallOptions | None,
    ) -> bytes:
        metadata: tuple[tuple[str, str], ...] = ()
        shard_key = None
        if options is not None:
            shard_key = options.shard_key
            metadata = tuple(options.metadata.items()) if options.metadata else ()
        return encode_request_header(request_id, key, size, deadline_us, trace, metadata, self.caller, shard_key)

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
        while not self.lost.is_set():
            quiet = time.monotonic() - self.last_received
            if quiet < interval:
                await anyio.sleep(interval - quiet)
                continue
            nonce += 1
            sent_at = time.monotonic()
            self.write(encode_frame(Ping(nonce)))
            await anyio.sleep(timeout)
            if self.last_received < sent_at:
                self.abort(CommunicationError(f"{self.endpoint} did not answer a ping within {timeout}s"))
                return


class Replica:
    """One endpoint of the service, its state, and its current session."""

    def __init__(self, endpoint: Endpoint, conn: Connection) -> None:
        self.endpoint = endpoint
        self.state = ReplicaState.UNAVAILABLE
        self.session: ClientSession | None = None
        self.wanted = True
        self._conn = conn

    def __repr__(self) -> str:
        return f"<Replica {self.endpoint} {self.state.value} pending={self.pending}>"

    @property
    def pending(self) -> int:
        session = self.session
        return session.pending if session is not None else 0

    def set_state(self, new: ReplicaState) -> None:
        old = self.state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
            raise AssertionError(f"replica {self.endpoint}: no transition {old.value} -> {new.value}")
        self.state = new
        balancer = self._conn.balancer
        if old is ReplicaState.AVAILABLE:
            balancer.remove(self)
        if new is ReplicaState.AVAILABLE:
            balancer.add(self)
        self._conn.replicas_changed()


class RetryBudget:
    """Retries allowed: ``ratio`` of recent calls plus ``min_per_second`` (Finagle's budget).

    A call costs one increment of :attr:`calls`, with no clock read: the
    connection calls :meth:`tick` once a second, which closes that second's
    counts into a window of ``budget_window`` seconds.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self.calls = 0  # ever made; the per-second counts are differences of it
        self._calls_at_tick = 0
        self._retries = 0  # in the current second
        self._seconds = max(1, math.ceil(policy.budget_window))
        self._window: deque[tuple[int, int]] = deque(maxlen=self._seconds - 1)  # (calls, retries) per past second

    def tick(self) -> None:
        self._window.append((self.calls - self._calls_at_tick, self._retries))
        self._calls_at_tick, self._retries = self.calls, 0

    def try_spend(self) -> bool:
        p = self._policy
        calls = self.calls - self._calls_at_tick + sum(c for c, _ in self._window)
        retries = self._retries + sum(r for _, r in self._window)
        # Finagle's reserve: a whole window's worth of the minimum, from the start.
        if retries >= p.budget_ratio * calls + p.budget_min_per_second * self._seconds:
            return False
        self._retries += 1
        return True


class Connection:
    """A client of one service: replicas from a resolver, a balancer, typed stubs.

    Made by :func:`connect`. Safe to share among the tasks of one event loop.
    """

    def __init__(self, resolver: Resolver, options: ClientOptions, tg: TaskGroup) -> None:
        self.resolver = resolver
        self.options = options
        self.balancer: Balancer = options.balancer if options.balancer is not None else RoundRobin()
        self.replicas: dict[Endpoint, Replica] = {}
        self._retries = 0
        self._tg = tg
        self._changed = anyio.Event()
        self._closed = False
        self._budget = RetryBudget(options.retry)
        self.resolver_error: BaseException | None = None  # the last resolve() failure, until one succeeds
        from .transport import use_protocol

        self._protocol_path = use_protocol(options.transport)
        self._effective_deadline = deadline_function()
        self._spin = options.optimistic_spin_duration

    async def _tick_budget(self) -> None:
        while True:
            await anyio.sleep(1)
            self._budget.tick()

    @property
    def retry_counts(self) -> dict[str, int]:
        """Attempts made (first tries and retries) and retries, since the connection opened."""
        return {"attempts": self._budget.calls + self._retries, "retries": self._retries}

    # -- stubs ---------------------------------------------------------------

    def stub(self, cls: type[T], *, options: CallOptions | None = None, name: str | None = None) -> T:
        """A stub of component ``cls``: the same methods, each awaitable, calling a remote replica."""
        spec = component_spec(cls)
        methods = spec.methods
        if name is not None and name != spec.name:
            from .component import _method_spec

            methods = {m: _method_spec(name, m, getattr(cls, m)) for m in methods}
        stub = _Stub(f"{spec.name} stub")
        for method in methods.values():
            setattr(stub, method.name, self.caller(method, options))
        return stub  # type: ignore[return-value]

    # -- calls ---------------------------------------------------------------

    def caller(self, method: MethodSpec, options: CallOptions | None = None) -> StubMethod:
        """``method`` as an async function of its arguments: ``await caller(*args)`` calls it remotely.

        The function binds and encodes the arguments, picks a replica, sends, waits and
        decodes, retrying as policy allows. It is the whole client side of a call, in one
        coroutine with what it uses bound once here: it runs for every call.
        ``caller.options(CallOptions(...))`` is the same method with other options.
        """
        encode_args, key, decode_result = method.encode_args, method.key, method.decode_result
        arity = len(method.params)
        effective_deadline, pick, budget, spin = self._effective_deadline, self.balancer.pick, self._budget, self._spin

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._closed:
                raise ClosedError("the connection is closed")
            if kwargs or len(args) != arity:
                payload = method.payload_from_args(args, kwargs)
            else:
                try:
                    payload = encode_args(args)
                except Exception:
                    payload = method.payload_from_args(args, kwargs)  # raises the error that names the argument
            deadline = effective_deadline()
            if serving_var.get() is not None:  # called from a handler: its own deadline bounds this call too
                inherited = current_deadline()
                if inherited is not None and inherited < deadline:
                    deadline = inherited
            trace = client_trace() if current_otel_context() else None  # an empty context holds no span
            budget.calls += 1
            attempt = 0
            while True:
                attempt += 1
                # The balancer holds only the replicas this connection gave it.
                replica: Replica | None = pick(options)  # type: ignore[assignment]
                session = None if replica is None else replica.session
                if session is None:
                    # This wait (until the deadline, or pick_timeout) is the call's whole wait for a
                    # replica: its Unreachable is final, not retried into another full wait.
                    session = await self._wait_for_session(options, deadline)
                try:
                    request_id, waiter = session.start(key, payload, deadline, trace, options)
                    try:
                        if spin > 0 and not waiter.done():
                            await session.spin(waiter, spin)
                        result = await waiter
                    except BaseException:
                        session.give_up(request_id, deadline)
                        raise
                    try:
                        return decode_result(result)
                    except Exception as exc:  # msgspec.ValidationError/DecodeError
                        raise RemoteError(
                            f"{method.full_name}: result does not match the return type: {exc}",
                            code=ErrorCode.MALFORMED_RESPONSE,
                        ) from None
                except CommunicationError as exc:
                    delay = self._retry_delay(exc, method, options, attempt, deadline)
                    if delay is None:
                        raise
                    self._retries += 1
                    await anyio.sleep(delay)

        call.__name__ = method.name
        call.__qualname__ = f"{method.full_name} (remote)"  # in reprs and tracebacks
        stub_method: StubMethod = call  # type: ignore[assignment]
        stub_method.options = lambda options: self.caller(method, options)  # type: ignore[method-assign]
        stub_method.__signature__ = method.signature
        return stub_method

    def _retry_delay(
        self, exc: CommunicationError, method: MethodSpec, options: CallOptions | None, attempt: int, deadline: float
    ) -> float | None:
        """How long to wait before retrying a call that failed with ``exc``, or ``None``: don't."""
        if self._closed:
            raise ClosedError("the connection is closed") from exc
        retry = options.retry if options is not None and options.retry is not None else method.retriable
        never_sent = isinstance(exc, Unreachable) or (isinstance(exc, SessionLost) and not exc.sent)
        if isinstance(exc, LocalProtocolError) or not (retry or never_sent):
            return None
        policy = self.options.retry
        if attempt >= policy.max_attempts or not self._budget.try_spend():
            return None
        delay = min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** (attempt - 1))
        delay *= 1 - policy.jitter * random.random()
        return None if anyio.current_time() + delay >= deadline else delay

    async def _wait_for_session(self, options: CallOptions | None, deadline: float) -> ClientSession:
        fail_fast = (
            options.fail_fast if options is not None and options.fail_fast is not None else self.options.fail_fast
        )
        # YARPC's choose: wait for a replica until the call's deadline; a call without one
        # waits pick_timeout.
        limit = deadline if not math.isinf(deadline) else anyio.current_time() + self.options.pick_timeout
        while True:
            replica: Replica | None = self.balancer.pick(options)  # type: ignore[assignment]
            if replica is not None and replica.session is not None:
                return replica.session
            if self._closed:
                raise ClosedError("the connection is closed")
            if fail_fast or anyio.current_time() >= limit:
                raise self._unreachable()
            changed = self._changed
            with anyio.move_on_after(limit - anyio.current_time()):
                await changed.wait()

    def _unreachable(self) -> Unreachable:
        if self.resolver_error is not None and not self.replicas:
            return Unreachable(f"no endpoints: {self.resolver!r} failed: {self.resolver_error!r}")
        if not self.replicas:
            return Unreachable(f"no endpoints: {self.resolver!r} returned none")
        states = ", ".join(f"{r.endpoint} {r.state.value}" for r in self.replicas.values())
        return Unreachable(f"no available replica among {len(self.replicas)}: {states}")

    def replicas_changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- replicas ------------------------------------------------------------

    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        wanted = set(endpoints)
        for endpoint in wanted:
            replica = self.replicas.get(endpoint)
            if replica is None:
                replica = self.replicas[endpoint] = Replica(endpoint, self)
                self._tg.start_soon(self._manage, replica)
            else:
                replica.wanted = True  # an address that went away and came back is used again
        for endpoint, replica in list(self.replicas.items()):
            if endpoint not in wanted:
                replica.wanted = False  # its task drains it and lets it go
        self.replicas_changed()

    async def _manage(self, replica: Replica) -> None:
        """The one task that owns ``replica``: connect, serve calls, drain, reconnect with backoff."""
        from .transport import open_session

        opts = self.options
        backoff = opts.reconnect_initial_backoff
        try:
            while replica.wanted and not self._closed:
                replica.set_state(ReplicaState.CONNECTING)
                try:
                    async with open_session(replica.endpoint, opts, self._protocol_path) as session:
                        backoff = opts.reconnect_initial_backoff  # reset after a successful handshake
                        replica.session = session
                        session.on_lost = lambda s=session: self._session_lost(replica, s)
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(session.keepalive)
                            await self._use_session(replica, session)
                            tg.cancel_scope.cancel()
                except (OSError, CallrtError, TimeoutError):
                    pass  # connect or handshake failed: back off and try again
                replica.session = None
                replica.set_state(ReplicaState.UNAVAILABLE)
                if not replica.wanted or self._closed:
                    break
                await anyio.sleep(backoff * (1 - 0.4 * random.random()))
                backoff = min(opts.reconnect_max_backoff, backoff * 2)
        finally:
            if self.replicas.get(replica.endpoint) is replica and not replica.wanted:
                del self.replicas[replica.endpoint]
            self.replicas_changed()

    def _session_lost(self, replica: Replica, session: ClientSession) -> None:
        # At once, not when this replica's task next runs: until then a balancer would keep
        # picking a dead replica (a load-aware one even prefers it, its count being 0), and
        # the retries of the calls it just failed would be spent on it.
        if replica.session is session and replica.state in (ReplicaState.AVAILABLE, ReplicaState.DRAINING):
            replica.set_state(ReplicaState.UNAVAILABLE)

    async def _use_session(self, replica: Replica, session: ClientSession) -> None:
        """AVAILABLE until the session is lost, the server says goaway, or the resolver drops it; then drain."""
        gone = session.lost.wait
        while replica.wanted:
            replica.set_state(ReplicaState.AVAILABLE)
            await _first(gone, session.goaway.wait, self._until(lambda: not replica.wanted))
            if session.lost.is_set() or session.goaway.is_set():
                break
            # Dropped by the resolver: finish the calls in flight, unless it comes back first.
            replica.set_state(ReplicaState.DRAINING)
            await _first(gone, session.goaway.wait, session.wait_idle, self._until(lambda: replica.wanted))
            if session.lost.is_set() or session.goaway.is_set() or not replica.wanted:
                break
        if not session.lost.is_set():
            if replica.state is ReplicaState.CONNECTING:
                return  # dropped before its handshake finished: never used, nothing to drain
            replica.set_state(ReplicaState.DRAINING)  # goaway or dropped: no new calls here
            await _first(gone, session.wait_idle)

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    async def _watch_resolver(self, version: Version | None) -> None:
        """Follow the resolver; errors and quick "nothing new" answers back off, capped."""
        backoff = 0.01
        while True:
            asked = anyio.current_time()
            try:
                endpoints, new_version = await self.resolver.resolve(version)
            except Exception as exc:
                self.resolver_error = exc
                await anyio.sleep(backoff * (1 - 0.4 * random.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            if new_version is None or new_version == version:
                if anyio.current_time() - asked < 1.0:
                    # It did not block: ask again later, not in a busy loop.
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                else:
                    backoff = 0.01  # it blocked and timed out: its watch is live, ask again now
                continue
            backoff = 0.01
            version = new_version
            self.resolver_error = None
            self.update_endpoints(endpoints)

    async def aclose(self) -> None:
        self._closed = True
        self.replicas_changed()


async def _first(*waits: Any) -> None:
    """Return when the first of ``waits`` (coroutine functions or coroutines) returns."""
    async with anyio.create_task_group() as tg:

        async def run(w: Any) -> None:
            await (w() if callable(w) else w)
            tg.cancel_scope.cancel()

        for w in waits:
            tg.start_soon(run, w)


class StubMethod(Protocol):
    """One remote method: ``await stub.method(*args)``; ``.options(CallOptions)`` for one call."""

    __signature__: inspect.Signature

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]: ...

    def options(self, options: CallOptions) -> StubMethod: ...


class _Stub:
    def __init__(self, label: str) -> None:
        self._label = label

    def __repr__(self) -> str:
        return f"<{self._label}>"


@asynccontextmanager
async def connect(resolver: Resolver, *, options: ClientOptions | None = None) -> AsyncIterator[Connection]:
    """``async with connect(resolver) as conn:`` — a client of the service ``resolver`` finds.

    A constant resolver with no endpoints raises :class:`~callrt.errors.Unreachable`;
    otherwise calls wait (up to their deadline, or ``pick_timeout`` without one) for a
    replica. A non-constant resolver that fails is asked again with capped backoff,
    at start-up too: its errors never end the connection.
    """
    options = options or ClientOptions()
    first_error: Exception | None = None
    try:
        endpoints, version = await resolver.resolve(None)
    except Exception as exc:
        if resolver.is_constant():
            raise
        # A resolver that may change can also recover: the watch keeps asking, with backoff.
        endpoints, version, first_error = (), None, exc
    if resolver.is_constant() and not endpoints:
        raise Unreachable(f"no endpoints: {resolver!r} is empty")
    raised: BaseException | None = None
    async with anyio.create_task_group() as tg:
        conn = Connection(resolver, options, tg)
        conn.resolver_error = first_error
        conn.update_endpoints(endpoints)
        tg.start_soon(conn._tick_budget)
        if not resolver.is_constant():
            tg.start_soon(conn._watch_resolver, version)
        try:
            yield conn
        except BaseException as exc:
            # Raised by the caller's block: re-raised below, outside our task group,
            # so that it reaches the caller as itself, not inside an exception group.
            raised = exc
        finally:
            await conn.aclose()
            tg.cancel_scope.cancel()
    if raised is not None:
        raise raised
