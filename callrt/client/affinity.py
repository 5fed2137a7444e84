"""Affinity on the client: collect every replica's claim for a call, pick one, send the call there only.

``client.by_affinity(RoomsAPI, Selection(...))`` gives a stub typed as
``RoomsAPI``; each call asks every replica ``callrt.Affinity.claim(method,
args)`` (see :mod:`callrt.claims`), waits for the claims as the
:class:`Selection` says, and sends the real call to the winner. psrpc's rules:

- a claim *qualifies* when it is not negative (negative declines) and is at least
  ``minimum``;
- ``accept_first``: the first qualifying claim wins at once;
- ``maximum``: a qualifying claim at or above it wins at once;
- ``short_circuit``: once a claim qualifies, wait at most this much longer;
- otherwise collection ends when every replica has answered or ``timeout`` (or the
  call's deadline) passes; then ``select`` chooses among the qualifying claims, or
  by default the highest claim wins (the first to arrive among equals).

Unlike psrpc, the client knows its replicas, so it stops as soon as all have
answered instead of always waiting out the timeout. When nothing qualifies,
:class:`~callrt.errors.NoClaim` says how many replicas answered, how many did not
and why, and what each claimed. Replicas that are connecting are waited for
within the claim window; unavailable and draining ones are not asked (and are
named in the error).

Once an SDK is configured, each claim is a call of its own (a CLIENT span
``callrt.Affinity/claim`` with the replica's address, and the client's
measurements; claims the decision made moot end ``cancelled``), and so is the
call to the winner: its CLIENT span, named after the method, starts once the
winner is known and is dated from the call's start, so that its time, like a
unary call's, includes choosing the replica; a call no replica claimed has it
too, with ``NoClaim`` and no server. All are siblings under the caller's
current span.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .. import telemetry
from .._deadline import cancellation_first
from ..claims import AffinityAPI
from ..component import MethodSpec, component_spec
from ..context import CallOptions
from ..endpoints import Endpoint
from ..errors import ClosedError, NoClaim
from ..interceptors import ClientCall, ClientInterceptor, intercept_client
from ..protocol import TraceContext
from ..telemetry import CallRecord
from ..tracing import client_trace, current_otel_context
from .fanout import call_limits, call_replica, session_of
from .replicas import ManagedReplica, ReplicaSet

__all__ = ("Claim", "Selection", "SelectionFunction", "make_affinity_stub")

T = TypeVar("T")

_CLAIM = component_spec(AffinityAPI).methods["claim"]


@dataclass(frozen=True, slots=True)
class Claim:
    """One replica's bid for a call: its endpoint and its affinity (higher fits better)."""

    endpoint: Endpoint
    affinity: float


SelectionFunction = Callable[[Sequence[Claim]], Claim | None]
"""``select(claims)``: the winner among the qualifying claims (in order of arrival), or None for none."""


@dataclass(frozen=True, slots=True)
class Selection:
    """How an affinity call picks its replica from the claims (psrpc's ``SelectionOpts``).

    :ivar minimum: claims below it do not qualify (negative ones never do: they decline).
    :ivar maximum: a qualifying claim at or above it wins at once, without waiting for the others.
    :ivar accept_first: the first qualifying claim wins at once.
    :ivar short_circuit: seconds to keep collecting after the first qualifying claim.
    :ivar timeout: seconds to collect claims at most (the call's deadline, if earlier, ends it too).
    :ivar select: chooses among the qualifying claims once collection ends, instead of the highest.
    """

    minimum: float = 0.0
    maximum: float | None = None
    accept_first: bool = False
    short_circuit: float | None = None
    timeout: float = 1.0
    select: SelectionFunction | None = None

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"Selection.timeout must be a positive number of seconds, not {self.timeout!r}")
        if self.short_circuit is not None and not self.short_circuit >= 0:
            raise ValueError(f"Selection.short_circuit must be seconds (>= 0) or None, not {self.short_circuit!r}")
        if math.isnan(self.minimum) or (self.maximum is not None and math.isnan(self.maximum)):
            raise ValueError("Selection.minimum and Selection.maximum must be numbers, not NaN")
        if self.select is not None and not callable(self.select):
            raise TypeError(f"Selection.select must be a function of the claims, not {self.select!r}")

    def qualifies(self, affinity: float) -> bool:
        return affinity >= 0 and affinity >= self.minimum

    def describe(self) -> str:
        parts = [f"minimum {self.minimum:g}"]
        if self.maximum is not None:
            parts.append(f"maximum {self.maximum:g}")
        if self.accept_first:
            parts.append("accept first")
        if self.short_circuit is not None:
            parts.append(f"short circuit {self.short_circuit:g} s")
        parts.append(f"timeout {self.timeout:g} s")
        if self.select is not None:
            parts.append(f"select {getattr(self.select, '__qualname__', repr(self.select))}")
        return ", ".join(parts)


# What a replica's claim came to: its affinity, or why it gave none.
_Outcome = float | BaseException


class _Collection:
    """The claims of one call, as they arrive, and the decision."""

    def __init__(self, selection: Selection, targets: Sequence[ManagedReplica]) -> None:
        self.selection = selection
        self.targets = targets
        self.outcomes: dict[Endpoint, _Outcome] = {}
        self.qualifying: list[tuple[Claim, ManagedReplica]] = []
        self.winner: ManagedReplica | None = None

    def add(self, replica: ManagedReplica, outcome: _Outcome) -> bool:
        """Record one replica's outcome; True when the selection is decided at once."""
        self.outcomes[replica.endpoint] = outcome
        if isinstance(outcome, BaseException) or not self.selection.qualifies(outcome):
            return False
        self.qualifying.append((Claim(replica.endpoint, outcome), replica))
        maximum = self.selection.maximum
        if self.selection.accept_first or (maximum is not None and outcome >= maximum):
            self.winner = replica
            return True
        return False

    def decide(self) -> ManagedReplica | None:
        if self.winner is not None:
            return self.winner
        if not self.qualifying:
            return None
        select = self.selection.select
        if select is None:
            best = max(self.qualifying, key=lambda pair: pair[0].affinity)  # the first among equals
            return best[1]
        chosen = select(tuple(claim for claim, _ in self.qualifying))
        if chosen is None:
            return None
        for claim, replica in self.qualifying:
            if claim is chosen or claim == chosen:
                return replica
        raise ValueError(f"the selection function returned {chosen!r}, which is not one of the claims it was given")

    def no_claim(self, method: str, window: float, chose_none: bool) -> NoClaim:
        """The error that says what every replica answered, or why it did not."""
        selection, outcomes = self.selection, self.outcomes
        answered = sum(not isinstance(o, BaseException) for o in outcomes.values())
        unanswered = len(self.targets) - answered
        details = []
        for replica in self.targets:
            outcome = outcomes.get(replica.endpoint)
            if outcome is None:
                what = f"no answer within the claim window ({window:.3g} s)"
            elif isinstance(outcome, BaseException):
                what = f"failed: {_describe_error(outcome)}"
            elif outcome < 0:
                what = f"declined ({outcome:g})"
            elif not selection.qualifies(outcome):
                what = f"claimed {outcome:g}, below the minimum {selection.minimum:g}"
            else:
                what = f"claimed {outcome:g}"
            details.append(f"{replica.endpoint} {what}")
        why = (
            f"the selection function chose none of {len(self.qualifying)} qualifying claims"
            if chose_none
            else "no replica claimed the call"
        )
        replicas = len(self.targets)
        message = (
            f"{method}: {why} ({replicas} replica{'s' if replicas != 1 else ''}: {answered} answered, "
            f"{unanswered} did not; selection: {selection.describe()}): {'; '.join(details)}"
        )
        claims = {str(e): float(o) for e, o in outcomes.items() if not isinstance(o, BaseException)}
        return NoClaim(message, answered=answered, unanswered=unanswered, claims=claims)


def _describe_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if text.startswith("[") else f"{type(error).__name__}: {text}"


async def _ask(
    replicas: ReplicaSet,
    replica: ManagedReplica,
    claim_payload: bytes,
    end: float,
    trace: TraceContext | None,
    options: CallOptions | None,
    send: MemoryObjectSendStream[tuple[ManagedReplica, _Outcome]],
    record: CallRecord | None = None,
) -> None:
    with send:
        outcome: _Outcome
        try:
            session = await session_of(replicas, replica, _CLAIM.full_name, end)
            outcome = await call_replica(session, _CLAIM, claim_payload, end, trace, options)
        except Exception as exc:
            outcome = exc
        except BaseException as exc:  # cancelled: decided without this claim
            if record is not None:
                telemetry.end_client_call(record, exc)
            raise
        if record is not None:
            telemetry.end_client_call(record, outcome if isinstance(outcome, BaseException) else None)
        try:
            send.send_nowait((replica, outcome))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # decided already


async def choose_replica(
    replicas: ReplicaSet,
    method: MethodSpec,
    payload: bytes,
    selection: Selection,
    end: float,
    trace: TraceContext | None,
    options: CallOptions | None = None,
) -> ManagedReplica:
    """Ask every replica for its claim on a call of ``method`` with ``payload``; the winner, or NoClaim."""
    if replicas.closed:
        raise ClosedError("the connection is closed")
    targets = list(replicas.replicas.values())
    if not targets:
        raise replicas.unreachable(method.full_name)
    now = anyio.current_time()
    limit = min(end, now + selection.timeout)
    collection = _Collection(selection, targets)
    claim_payload = _CLAIM.encode_args((method.full_name, payload))
    short_circuited = False
    send, receive = anyio.create_memory_object_stream[tuple[ManagedReplica, _Outcome]](len(targets))
    async with anyio.create_task_group() as tg:
        with send:
            for replica in targets:
                # Each claim's CLIENT span starts here, in the caller's context: siblings under its current span.
                record = telemetry.client_record(_CLAIM.full_name, len(claim_payload))
                to_send = trace if record is None else record.replica(replica.endpoint)
                tg.start_soon(_ask, replicas, replica, claim_payload, limit, to_send, options, send.clone(), record)
        with receive:
            while True:
                arrived: tuple[ManagedReplica, _Outcome] | None = None
                with anyio.move_on_at(limit):
                    try:
                        arrived = await receive.receive()
                    except anyio.EndOfStream:
                        break  # every replica answered
                if arrived is None:
                    break  # the claim window (or the short circuit) ended
                if collection.add(*arrived):
                    break
                if selection.short_circuit is not None and not short_circuited and collection.qualifying:
                    short_circuited = True
                    limit = min(limit, anyio.current_time() + selection.short_circuit)
        tg.cancel_scope.cancel()  # the claims still outstanding are not needed
    winner = collection.decide()
    if winner is None:
        raise collection.no_claim(
            method.full_name, limit - now, selection.select is not None and bool(collection.qualifying)
        )
    return winner


def make_affinity_stub(
    replicas: ReplicaSet,
    effective_deadline: Callable[[], float],
    cls: Callable[..., T],
    selection: Selection,
    options: CallOptions | None,
    interceptors: Sequence[ClientInterceptor] = (),
) -> T:
    """A stub of ``cls`` whose every call goes to the replica the claims choose, through ``interceptors``."""
    spec = component_spec(cls)
    stub = _AffinityStub(spec.name)
    for method in spec.methods.values():
        made = _affinity_method(replicas, effective_deadline, method, selection, options, interceptors)
        setattr(stub, method.name, made)
    return stub  # type: ignore[return-value]


class _AffinityStub:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<{self._name} affinity stub>"


def _affinity_method(
    replicas: ReplicaSet,
    effective_deadline: Callable[[], float],
    method: MethodSpec,
    selection: Selection,
    options: CallOptions | None,
    interceptors: Sequence[ClientInterceptor],
) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def run(
        args: tuple[Any, ...], kwargs: dict[str, Any], options: CallOptions | None, observer: ClientCall | None
    ) -> Any:
        if method.stream is not None:
            raise TypeError(f"{method.full_name} is a stream method: affinity calls are unary only")
        payload = method.payload_from_args(args, kwargs)
        deadline, end = call_limits(effective_deadline, None)
        await cancellation_first(deadline)  # else its claims would still go out, with the window's own limit
        trace = client_trace() if current_otel_context() else None
        # The call's record, dated from now: its span starts when the winner is known (CallRecord.replica).
        record = telemetry.client_record(method.full_name, len(payload))
        try:
            # The claims carry the call's options too: a server interceptor that checks metadata
            # (a tenant, a token) sees them on callrt.Affinity.claim as on the call.
            winner = await choose_replica(replicas, method, payload, selection, end, trace, options)
            if observer is not None:
                observer.replica = str(winner.endpoint)
            session = winner.session
            if session is None:
                session = await session_of(replicas, winner, method.full_name, end)  # lost an instant ago: says so
            if record is not None:
                trace = record.replica(session.endpoint)
            result = await call_replica(session, method, payload, deadline, trace, options)
        except BaseException as exc:
            if record is not None:
                telemetry.end_client_call(record, exc)
            raise
        if record is not None:
            telemetry.end_client_call(record, None)
        return result

    async def call(*args: Any, **kwargs: Any) -> Any:
        return await run(args, kwargs, options, None)

    if interceptors:  # the client's chain, around the whole call: claims and the call to the winner
        call = intercept_client(  # type: ignore[assignment]
            interceptors,
            method.full_name,
            options,
            effective_deadline,
            lambda c: run(c.args, c.kwargs, c.options, c),
        )
    call.__name__ = method.name
    call.__qualname__ = f"{method.full_name} (by affinity)"
    call.__signature__ = method.signature  # type: ignore[attr-defined]
    return call
