"""The client's replicas: one per endpoint the resolver gives, each with a lifecycle of its own.

Each replica has one task that owns it (:meth:`ReplicaSet.manage`), and its
state lives in :attr:`ManagedReplica.state` and nowhere else; every change
goes through :meth:`ManagedReplica.set_state`, which checks it against
:data:`TRANSITIONS` and keeps the balancer in step (only AVAILABLE replicas
are in the balancer)::

    CONNECTING ──handshake done──▶ AVAILABLE ◀──address back──┐
        ▲   │                       ▲  │                         │
        │   │      health: SERVING  │  └──goaway / removed──▶ DRAINING
        │   │                       ▼                            │
        │   │                  NOT_SERVING ──goaway / removed──▶─┤
        │   └──failed──▶ UNAVAILABLE ◀──lost / keepalive failed──┘ │
        └──────backoff────────┘        ◀──drained: calls done, closed─┘

A replica's socket is a :class:`~callrt.connection.client.ClientSession`,
opened through the transport its endpoint's scheme and the client's options
choose.

*Health.* While a replica is connected, its task also asks the server's
``callrt.Health.check`` every ``ClientOptions.health_interval`` seconds, for
the server as a whole (``""``) and for each component this client has made a
stub of (:meth:`ReplicaSet.want_health`). A replica any of them reports
NOT_SERVING leaves the balancer (state NOT_SERVING) until every answer is
SERVING again. SERVICE_UNKNOWN, an unanswered or failed check change nothing;
a server that does not answer health at all (``UnknownMethod``, or an access
policy refusing it) counts as serving and is not asked again on that
connection. A draining server needs no poll: its goaway takes the replica out
at once. The balancer only ever holds AVAILABLE replicas, so a call pays
nothing for any of this.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .. import telemetry
from ..balancers import Balancer
from ..component import component_spec
from ..connection._logs import loggable
from ..connection.client import ClientSession
from ..context import CallOptions
from ..endpoints import Endpoint
from ..errors import (
    CallrtError,
    ClosedError,
    NoReplicaInTime,
    PermissionDenied,
    RemoteError,
    RemoteProtocolError,
    UnknownMethod,
    Unreachable,
)
from ..health import HEALTH, HealthAPI
from ..options import ClientOptions
from ..reflection import REFLECTION
from ..transport import TransportSelector

__all__ = ("TRANSITIONS", "ManagedReplica", "ReplicaSet", "ReplicaState")

# DEBUG: replica state changes, failed connection attempts; INFO: a server draining (goaway),
# a connection to an available replica lost; WARNING: a server that broke the protocol.
logger = logging.getLogger("callrt.client")

# A call with a deadline stops waiting for a replica a little before it (a tenth of the time it
# had left when it began to wait, at most DEADLINE_MARGIN) and raises NoReplicaInTime, which says
# why there was none, before the caller's own cancel scope expires and raises a bare TimeoutError.
# A loaded loop wakes timers late (uvloop's clock ticks in milliseconds), so the margin is not a
# hair's breadth; a replica arriving within it would leave the call little time anyway.
DEADLINE_MARGIN = 0.05


class ReplicaState(enum.Enum):
    CONNECTING = "connecting"
    AVAILABLE = "available"
    NOT_SERVING = "not_serving"  # connected, but its health check says NOT_SERVING: not in the balancer
    DRAINING = "draining"
    UNAVAILABLE = "unavailable"


TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    ReplicaState.CONNECTING: frozenset({ReplicaState.AVAILABLE, ReplicaState.UNAVAILABLE}),
    ReplicaState.AVAILABLE: frozenset({ReplicaState.NOT_SERVING, ReplicaState.DRAINING, ReplicaState.UNAVAILABLE}),
    ReplicaState.NOT_SERVING: frozenset({ReplicaState.AVAILABLE, ReplicaState.DRAINING, ReplicaState.UNAVAILABLE}),
    ReplicaState.DRAINING: frozenset({ReplicaState.AVAILABLE, ReplicaState.NOT_SERVING, ReplicaState.UNAVAILABLE}),
    ReplicaState.UNAVAILABLE: frozenset({ReplicaState.CONNECTING}),
}

# callrt.Health.check, called on one replica's session by its task (not through the balancer).
_CHECK = component_spec(HealthAPI).methods["check"]
# Components every server has: callrt's own, never asked about.
_OWN = frozenset({HEALTH, REFLECTION})


class ManagedReplica:
    """One endpoint of the service as the client manages it: its state and its current session.

    It is what balancers see as a :class:`~callrt.balancers.Replica`.
    """

    def __init__(self, endpoint: Endpoint, replicas: ReplicaSet) -> None:
        self.endpoint = endpoint
        self.state = ReplicaState.UNAVAILABLE
        self.session: ClientSession | None = None
        self.wanted = True
        self.last_error: BaseException | None = None  # why the last connection attempt failed, if it did
        # What its health checks said NOT_SERVING for ("" is the server as a whole); empty: serving.
        self.not_serving: tuple[str, ...] = ()
        self._replicas = replicas

    def __repr__(self) -> str:
        return f"<Replica {self.endpoint} {self.state.value} pending={self.pending}>"

    @property
    def pending(self) -> int:
        session = self.session
        return session.pending if session is not None else 0

    def up_state(self) -> ReplicaState:
        """What a connected replica that takes calls is: AVAILABLE, or NOT_SERVING by its health checks."""
        return ReplicaState.NOT_SERVING if self.not_serving else ReplicaState.AVAILABLE

    def why(self) -> str:
        """Why it takes no calls, for messages: ``" (connection refused)"``, ``" (health: NOT_SERVING ...)"``, or ``""``."""
        if self.state is ReplicaState.NOT_SERVING:
            names = ", ".join(repr(n) if n else "the server" for n in self.not_serving)
            return f" (callrt.Health says NOT_SERVING for {names})"
        error = self.last_error
        if error is None:
            return ""
        text, endpoint = str(error) or type(error).__name__, str(self.endpoint)
        # The messages of callrt.transport name the endpoint, which the caller's message names already.
        prefix = f"cannot connect to {endpoint}: "
        if text.startswith(prefix):
            text = text[len(prefix) :]
        elif text.startswith(endpoint + " "):
            text = "the server " + text[len(endpoint) + 1 :]
        else:
            text = text.replace(f" with {endpoint}", "").replace(f" to {endpoint}", "")
        if self.state is ReplicaState.CONNECTING:
            return f" (last attempt: {text})"
        return f" ({text})"

    def set_state(self, new: ReplicaState) -> None:
        old = self.state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
            raise AssertionError(f"replica {self.endpoint}: no transition {old.value} -> {new.value}")
        self.state = new
        logger.debug("replica %s: %s -> %s", self.endpoint, old.value, new.value)
        balancer = self._replicas.balancer
        if old is ReplicaState.AVAILABLE:
            balancer.remove(self)
        if new is ReplicaState.AVAILABLE:
            balancer.add(self)
        self._replicas.changed()


class ReplicaSet:
    """The replicas of one client, the balancer that picks among them, and their tasks."""

    def __init__(
        self, options: ClientOptions, balancer: Balancer, transports: TransportSelector, tg: TaskGroup
    ) -> None:
        self.options = options
        self.balancer = balancer
        self.replicas: dict[Endpoint, ManagedReplica] = {}
        self.closed = False
        self.describe_source: Callable[[], str] = lambda: "the resolver"  # for Unreachable's message
        self.source_error: Callable[[], BaseException | None] = lambda: None
        #: Components whose health each replica is asked about, besides the server's (``""``).
        self.health_components: set[str] = set()
        self._transports = transports
        self._tg = tg
        self._changed = anyio.Event()
        telemetry.watch_replicas(self, lambda: [r.state.value for r in list(self.replicas.values())])

    def changed(self) -> None:
        """Wake whoever waits for a replica to change state."""
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        self.closed = True
        self.changed()

    def want_health(self, cls: object, name: str | None = None) -> None:
        """Ask each replica about the health of ``cls``'s component (or ``name``) too: a stub of it was made."""
        component = name if name is not None else component_spec(cls).name
        if component not in _OWN:
            self.health_components.add(component)

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """The resolver's latest answer: new endpoints get a replica, missing ones drain and go."""
        wanted = set(endpoints)
        for endpoint in wanted:
            replica = self.replicas.get(endpoint)
            if replica is None:
                replica = self.replicas[endpoint] = ManagedReplica(endpoint, self)
                self._tg.start_soon(self.manage, replica)
            else:
                replica.wanted = True  # an address that went away and came back is used again
        for endpoint, replica in list(self.replicas.items()):
            if endpoint not in wanted:
                replica.wanted = False  # its task drains it and lets it go
        self.changed()

    async def wait_for_session(self, options: CallOptions | None, deadline: float, method: str = "") -> ClientSession:
        """A session of an available replica, waiting for one until ``deadline`` (or ``pick_timeout``).

        :raises Unreachable: none within ``pick_timeout`` (a call without a deadline), or at once with ``fail_fast``.
        :raises NoReplicaInTime: none before the call's deadline (a margin before it: see :data:`DEADLINE_MARGIN`).
        """
        fail_fast = (
            options.fail_fast if options is not None and options.fail_fast is not None else self.options.fail_fast
        )
        # YARPC's choose: wait for a replica until the call's deadline; a call without one
        # waits pick_timeout.
        by_deadline = not math.isinf(deadline)
        now = anyio.current_time()
        if by_deadline:
            limit = deadline - min(DEADLINE_MARGIN, (deadline - now) / 10)
        else:
            limit = now + self.options.pick_timeout
        while True:
            replica: ManagedReplica | None = self.balancer.pick(options)  # type: ignore[assignment]
            if replica is not None and replica.session is not None:
                return replica.session
            if self.closed:
                raise ClosedError("the connection is closed")
            if fail_fast:
                raise self.unreachable(method)
            if anyio.current_time() >= limit:
                if by_deadline:
                    why = self.unreachable()
                    prefix = f"{method}: " if method else ""
                    raise NoReplicaInTime(f"{prefix}deadline reached while waiting for a replica ({why})") from None
                raise self.unreachable(method)
            changed = self._changed
            with anyio.move_on_after(limit - anyio.current_time()):
                await changed.wait()

    def unreachable(self, method: str = "") -> Unreachable:
        """Why no replica can take a call (of ``method``, named first when given)."""
        prefix = f"{method}: " if method else ""
        error = self.source_error()
        if error is not None and not self.replicas:
            return Unreachable(f"{prefix}no endpoints: {self.describe_source()} failed: {error!r}")
        if not self.replicas:
            return Unreachable(f"{prefix}no endpoints: {self.describe_source()} returned none")
        replicas = list(self.replicas.values())
        states = ", ".join(f"{r.endpoint} {r.state.value}{r.why()}" for r in replicas)
        if all(r.state is ReplicaState.NOT_SERVING for r in replicas):
            return Unreachable(
                f"{prefix}no available replica among {len(replicas)}: every one is connected but NOT_SERVING "
                f"by its health check: {states}"
            )
        return Unreachable(f"{prefix}no available replica among {len(replicas)}: {states}")

    async def manage(self, replica: ManagedReplica) -> None:
        """The one task that owns ``replica``: connect, serve calls, drain, reconnect with backoff."""
        opts = self.options
        backoff = opts.reconnect_initial_backoff
        transport = self._transports.for_endpoint(replica.endpoint)
        try:
            while replica.wanted and not self.closed:
                replica.set_state(ReplicaState.CONNECTING)
                try:
                    async with transport.connect(replica.endpoint, opts) as session:
                        backoff = opts.reconnect_initial_backoff  # reset after a successful handshake
                        replica.last_error = None
                        replica.not_serving = ()  # a new connection: serving until its server says otherwise
                        replica.session = session
                        session.on_lost = lambda s=session: self._session_lost(replica, s)
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(session.keepalive)
                            if opts.health_interval:
                                tg.start_soon(self._watch_health, replica, session, opts.health_interval)
                            await self._use_session(replica, session)
                            tg.cancel_scope.cancel()
                except (OSError, CallrtError, TimeoutError) as exc:
                    # Connect or handshake failed (kept for Unreachable's message: a TLS certificate
                    # problem, say): back off and try again.
                    replica.last_error = exc
                    logger.debug("%s (next attempt in up to %.3gs)", loggable(str(exc) or repr(exc)), backoff)
                replica.session = None
                replica.set_state(ReplicaState.UNAVAILABLE)
                if not replica.wanted or self.closed:
                    break
                await anyio.sleep(backoff * (1 - 0.4 * random.random()))
                backoff = min(opts.reconnect_max_backoff, backoff * 2)
        finally:
            if self.replicas.get(replica.endpoint) is replica and not replica.wanted:
                del self.replicas[replica.endpoint]
            self.changed()

    def _session_lost(self, replica: ManagedReplica, session: ClientSession) -> None:
        # At once, not when this replica's task next runs: until then a balancer would keep
        # picking a dead replica (a load-aware one even prefers it, its count being 0), and
        # the retries of the calls it just failed would be spent on it.
        if replica.session is session and replica.state in _CONNECTED:
            error = session.error
            if isinstance(error, RemoteProtocolError):
                logger.warning("%s broke the protocol, connection closed: %s", replica.endpoint, loggable(str(error)))
            elif not self.closed and not session.goaway.is_set():
                logger.info("connection to %s lost%s", replica.endpoint, f": {loggable(str(error))}" if error else "")
            replica.set_state(ReplicaState.UNAVAILABLE)

    async def _use_session(self, replica: ManagedReplica, session: ClientSession) -> None:
        """AVAILABLE until the session is lost, the server says goaway, or the resolver drops it; then drain."""
        gone = session.lost.wait
        while replica.wanted:
            replica.set_state(replica.up_state())
            await _first(gone, session.goaway.wait, self._until(lambda: not replica.wanted))
            if session.goaway.is_set() and not session.lost.is_set():
                logger.info("%s is draining (goaway): no new calls go to it", replica.endpoint)
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

    async def _watch_health(self, replica: ManagedReplica, session: ClientSession, interval: float) -> None:
        """Every ``interval``, ask ``session``'s server about its health; move ``replica`` in or out of the balancer."""
        while not session.is_lost and not session.goaway.is_set():
            await anyio.sleep(interval)
            if replica.state is ReplicaState.DRAINING:
                continue  # dropped by the resolver: no new calls go to it either way
            try:
                said = await self._check_health(session)
            except (UnknownMethod, PermissionDenied) as exc:
                # An older server, or one whose access policy refuses us: serving, for as long as
                # this connection lasts (its answer would not change); not asked again.
                logger.debug("%s does not answer %s.check (%s): taken as serving", session.endpoint, HEALTH, exc.code)
                if replica.session is session and replica.not_serving:
                    replica.not_serving = ()
                    if replica.state is ReplicaState.NOT_SERVING:
                        replica.set_state(ReplicaState.AVAILABLE)
                return
            if said is None or replica.session is not session or session.goaway.is_set():
                # No answer this time (busy, lost, a failed check): what it said last stands. After a
                # goaway (a draining server also answers NOT_SERVING) the replica is DRAINING, or
                # about to be: not NOT_SERVING on the way.
                continue
            if said != replica.not_serving:
                if said and not replica.not_serving:
                    names = ", ".join(repr(n) if n else "the server" for n in said)
                    logger.info("%s reports NOT_SERVING for %s: no new calls go to it", session.endpoint, names)
                elif not said:
                    logger.info("%s reports SERVING again: calls go to it", session.endpoint)
                replica.not_serving = said
                if replica.state in (ReplicaState.AVAILABLE, ReplicaState.NOT_SERVING):
                    replica.set_state(replica.up_state())

    async def _check_health(self, session: ClientSession) -> tuple[str, ...] | None:
        """The names (``""`` and this client's components) ``session``'s server says NOT_SERVING for.

        ``None`` when it did not answer them all within ``keepalive_timeout`` (or the session was lost).
        :raises UnknownMethod, PermissionDenied: the server does not answer health to us.
        """
        names = ("", *sorted(self.health_components))
        timeout = self.options.keepalive_timeout
        deadline = anyio.current_time() + timeout
        try:
            started = [session.start(_CHECK.key, _CHECK.encode_args((name,)), deadline, None, None) for name in names]
        except CallrtError:
            return None  # the session is gone, or cannot take the request
        not_serving: list[str] = []
        refused: RemoteError | None = None
        with anyio.move_on_after(timeout):
            # Every waiter awaited, even after a refusal: none is left holding an exception nobody reads.
            for name, (_, waiter) in zip(names, started, strict=True):
                try:
                    status = _CHECK.decode_result(await waiter)
                except (UnknownMethod, PermissionDenied) as exc:
                    refused = exc
                    continue
                except Exception:  # a failed check, an answer that is no Status, the session lost
                    continue
                if status == "NOT_SERVING":
                    not_serving.append(name)
            if refused is not None:
                raise refused
            return tuple(not_serving)
        for request_id, _ in started:
            session.give_up(request_id, deadline)
        return None

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


_CONNECTED = (ReplicaState.AVAILABLE, ReplicaState.NOT_SERVING, ReplicaState.DRAINING)


async def _first(*waits: Any) -> None:
    """Return when the first of ``waits`` (coroutine functions or coroutines) returns."""
    async with anyio.create_task_group() as tg:

        async def run(w: Any) -> None:
            awaitable: Any = w() if callable(w) else w  # Any: callable() would narrow it to return object
            await awaitable
            tg.cancel_scope.cancel()

        for w in waits:
            tg.start_soon(run, w)
