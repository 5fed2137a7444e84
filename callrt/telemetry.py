"""OpenTelemetry spans and metrics per call, on both sides, at no cost until an SDK is configured.

Once an SDK has set a tracer provider, each call has a CLIENT span on the
caller and a SERVER span (its child) around the handler, named
``component/method`` with the RPC semantic conventions' attributes
(``rpc.system`` = ``callrt``, ``rpc.service``, ``rpc.method``; on the client
``server.address``, ``server.port`` and ``network.transport`` of the replica
called, on the server ``network.transport`` and ``client.address``;
``error.type`` and an error status on failure); retries are events on the
client span. Once a meter provider is set, calls are measured:
``rpc.client.duration`` and ``rpc.server.duration`` (ms),
``rpc.client.request.size``, ``rpc.server.request.size`` and
``rpc.server.response.size`` (bytes), ``callrt.server.calls_in_flight``,
``callrt.server.connections``, ``callrt.client.retries``,
``callrt.client.retry_budget_refusals`` and ``callrt.client.replicas`` (by
state), with the component, method, where the call went and the outcome as
attributes. A stream call is one call, from its opening to its end; each
replica's request of a fan-out, each claim of an affinity call and the call
to its winner is one too (:func:`client_record`). A call its caller left (a
stream closed early, a fan-out's request cancelled) or whose handler was
cancelled has ``error.type`` :data:`CANCELLED`.

Without providers callrt makes no span and records nothing: the API's no-op
objects still cost microseconds a call, so each call first reads the API's
two globals (:func:`tracing_enabled`, :func:`metrics_enabled`).

With them, nearly all of a call's cost is the SDK's own: it cleans and copies
the attributes of every span and every measurement, and hashes a
measurement's attributes to find its series (bench/README.md, "The SDK
configured"). So callrt asks for as little as the conventions allow: each
call's attribute dicts are built once per method (and server endpoint or
transport, and outcome) and reused; a client span starts with all its
attributes (at the first attempt, dated from the call's start); the client
span is not made current (only callrt runs inside it), its trace context
is read from it; calls in flight are counted by callrt and observed when
metrics are collected, not recorded twice per call; the SDK's tracer and
instruments are bound once instead of through the API's proxies. Exemplars:
the duration histograms are recorded in the call's span's context, so the
SDK's default (trace-based) exemplar filter links their samples to traces;
sizes and counters are recorded in a context with no span, so they carry
none (an exemplar costs ~2 µs per measurement and says nothing about sizes).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from contextvars import Token
from types import SimpleNamespace
from typing import Any

import anyio
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_internal  # its global meter provider: None until set
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from .endpoints import Endpoint
from .protocol import TraceContext
from .tracing import client_trace, current_otel_context, remote_parent, span_trace

__all__ = (
    "CANCELLED",
    "CallRecord",
    "client_record",
    "connection_change",
    "end_client_call",
    "failed_or_cancelled",
    "finish",
    "retried",
    "retry_refused",
    "start_client_call",
    "start_server_call",
    "watch_replicas",
)

#: The API modules whose globals say whether an SDK set providers (None until then). An API
#: that keeps them elsewhere gets stand-ins that always say "set": correct, if slower.
TRACE_API: Any = otel_trace if hasattr(otel_trace, "_TRACER_PROVIDER") else SimpleNamespace(_TRACER_PROVIDER=True)
METRICS_API: Any = (
    _metrics_internal if hasattr(_metrics_internal, "_METER_PROVIDER") else SimpleNamespace(_METER_PROVIDER=True)
)


def tracing_enabled() -> bool:
    """Whether an SDK has set a tracer provider (``get_tracer_provider()`` answers a proxy either way).

    The hot paths inline this test and :func:`metrics_enabled`'s: a call per call cost more than the test.
    """
    return TRACE_API._TRACER_PROVIDER is not None


def metrics_enabled() -> bool:
    """Whether an SDK has set a meter provider."""
    return METRICS_API._METER_PROVIDER is not None


#: A context that holds no span. The size histograms and the counters are recorded in it, so the
#: SDK's default exemplar filter (trace-based) never samples them; only the duration histograms,
#: recorded in the call's span's context, get exemplars (see "Exemplars" in docs/observability.md).
_NO_SPAN = otel_context.Context()

#: ``error.type`` of a client's call the caller gave up on (see :meth:`CallRecord.cancelled`).
CANCELLED = "cancelled"


class _Where:
    """Where a call went: the server's endpoint (on a client) or the transport (on a server), as attributes.

    One per endpoint or transport, compared by identity: a cache key that costs no Python ``__hash__``.
    """

    __slots__ = ("attributes",)

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = attributes


_TRANSPORTS = {scheme: _Where({"network.transport": scheme}) for scheme in ("tcp", "unix")}
_INPROC = _Where({"network.transport": "inproc"})

# By id(): an Endpoint's dataclass __hash__ and __eq__ are Python calls. Each entry keeps its
# endpoint alive, so that no other object takes the id: one per replica connected, emptied when
# it reaches _CACHED (replicas that come and go for months must not grow the process).
_endpoints: dict[int, tuple[Endpoint, _Where]] = {}
_CACHED = 4096


def _endpoint_where(endpoint: Endpoint) -> _Where:
    """``server.address``, ``server.port`` and ``network.transport`` of a server's endpoint, per the conventions."""
    entry = _endpoints.get(id(endpoint))
    if entry is not None and entry[0] is endpoint:
        return entry[1]
    attributes: dict[str, Any]
    if endpoint.scheme == "tcp":
        attributes = {"server.address": endpoint.host, "server.port": endpoint.port, "network.transport": "tcp"}
    elif endpoint.scheme == "unix":
        attributes = {"server.address": endpoint.address, "network.transport": "unix"}
    else:  # an in-memory server has no address but its name
        attributes = {"server.address": str(endpoint), "network.transport": "inproc"}
    where = _Where(attributes)
    if len(_endpoints) >= _CACHED:
        _endpoints.clear()
    _endpoints[id(endpoint)] = (endpoint, where)
    return where


class _Method:
    """What every call of one method shares, made at its first call: its span name, attribute dicts and count.

    The SDK cleans and copies attributes on every span and measurement whatever it is given; building
    them once per method (and per server endpoint or transport, and outcome) saves callrt's share.
    """

    __slots__ = ("base", "in_flight", "metric_attributes", "served", "span_name")

    def __init__(self, name: str) -> None:
        service, _, method = name.rpartition(".")
        self.span_name = f"{service}/{method}"
        self.base: dict[str, str] = {"rpc.system": "callrt", "rpc.service": service, "rpc.method": method}
        self.metric_attributes: dict[tuple[_Where | None, str | None], dict[str, Any]] = {}
        #: Calls of it being served; changed on the event loop's thread only (the handlers' threads never do).
        self.in_flight = 0
        self.served = False  # by a server of this process: then it has a calls_in_flight series

    def attributes(self, where: _Where | None, error: str | None) -> dict[str, Any]:
        """The method's attributes, where the call went, and the outcome (``error.type``, None for success)."""
        attributes = self.metric_attributes.get((where, error))
        if attributes is None:
            attributes = dict(self.base)
            if where is not None:
                attributes |= where.attributes
            if error is not None:
                attributes["error.type"] = error
            if len(self.metric_attributes) >= _CACHED:  # bounded, as _endpoints is
                self.metric_attributes.clear()
            self.metric_attributes[(where, error)] = attributes
        return attributes


_methods: dict[str, _Method] = {}


def _method(name: str) -> _Method:
    method = _methods.get(name)
    if method is None:
        method = _methods[name] = _Method(name)
    return method


class _Instruments:
    """callrt's instruments on the meter of the meter provider set when callrt first measured."""

    def __init__(self) -> None:
        meter = otel_metrics.get_meter("callrt")
        self.client_duration = meter.create_histogram(
            "rpc.client.duration", unit="ms", description="Calls, as the caller saw them"
        )
        self.server_duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Calls, in the server"
        )
        self.client_request_size = meter.create_histogram(
            "rpc.client.request.size", unit="By", description="Arguments sent"
        )
        self.server_request_size = meter.create_histogram(
            "rpc.server.request.size", unit="By", description="Arguments received"
        )
        self.server_response_size = meter.create_histogram(
            "rpc.server.response.size", unit="By", description="Results sent"
        )
        self.connections = meter.create_up_down_counter("callrt.server.connections", description="Connections served")
        self.retries = meter.create_counter("callrt.client.retries", description="Calls tried again")
        self.refusals = meter.create_counter(
            "callrt.client.retry_budget_refusals", description="Retries the budget refused"
        )
        # Read when metrics are collected, from counts callrt keeps anyway: nothing recorded per call.
        meter.create_observable_up_down_counter(
            "callrt.server.calls_in_flight", [_observe_in_flight], description="Calls being served"
        )
        meter.create_observable_gauge("callrt.client.replicas", [_observe_replicas], description="Replicas by state")


class _Bound:
    """The tracer, or the instruments, made for the provider the API holds (made again if that changes)."""

    __slots__ = ("provider", "value")

    def __init__(self) -> None:
        self.provider: object = None
        self.value: Any = None


_tracing = _Bound()
_measuring = _Bound()


def _tracer() -> Tracer:
    # The tracer of the SDK's provider itself: the API's proxy tracer adds a call per span.
    provider = TRACE_API._TRACER_PROVIDER
    if provider is not _tracing.provider:
        _tracing.value = otel_trace.get_tracer_provider().get_tracer("callrt")
        _tracing.provider = provider
    tracer: Tracer = _tracing.value
    return tracer


def _instruments() -> _Instruments:
    provider = METRICS_API._METER_PROVIDER
    if provider is not _measuring.provider:
        _measuring.value = _Instruments()
        _measuring.provider = provider
    instruments: _Instruments = _measuring.value
    return instruments


def _observe_in_flight(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(method.in_flight, method.base) for method in list(_methods.values()) if method.served]


# The replica states of live clients, counted when metrics are read.
_replica_states: dict[int, Callable[[], Iterable[str]]] = {}


def _observe_replicas(options: CallbackOptions) -> Iterable[Observation]:
    counts: dict[str, int] = {}
    for states in list(_replica_states.values()):
        for state in states():
            counts[state] = counts.get(state, 0) + 1
    return [Observation(n, {"state": state}) for state, n in counts.items()]


def watch_replicas(owner: object, states: Callable[[], Iterable[str]]) -> None:
    """Count ``states()`` (one per replica) in ``callrt.client.replicas`` while ``owner`` lives."""
    key = id(owner)
    _replica_states[key] = states
    weakref.finalize(owner, _replica_states.pop, key, None)
    if metrics_enabled():  # the gauge exists from now on, not from the client's first call
        _instruments()


class CallRecord:
    """One call's span and measurements, on one side.

    A server's span is current while the handler runs (its calls are the span's children). A
    client's is not made current: nothing runs inside it but callrt, and the trace context it
    sends is taken from the span itself (:attr:`trace`).
    """

    __slots__ = (
        "endpoint",
        "error",
        "instruments",
        "method",
        "request_size",
        "response_size",
        "server",
        "span",
        "started",
        "started_ns",
        "token",
        "trace",
        "where",
    )

    def __init__(self, method: _Method, request_size: int, server: bool) -> None:
        self.method = method
        self.request_size = request_size
        self.server = server
        self.span: Span | None = None
        self.token: Token[otel_context.Context] | None = None
        self.trace: TraceContext | None = None  # a client's: what the request carries
        self.endpoint: Endpoint | None = None  # a client's, of its last attempt
        self.where: _Where | None = None  # the endpoint's attributes (client) or the transport's (server)
        self.error: str | None = None  # error.type, once failed
        self.instruments: _Instruments | None = None  # set when measured
        self.started = 0.0  # perf_counter(), when measured
        self.started_ns = 0  # a client's, when traced: its span's start time
        self.response_size: int | None = None  # the server's, once it has replied

    def replica(self, endpoint: Endpoint) -> TraceContext | None:
        """A client's attempt goes to ``endpoint``: the trace context its request carries.

        The first attempt starts the span, dated from the call's start, with the server's
        attributes among those it starts with (as the conventions ask: samplers see them).
        """
        if endpoint is not self.endpoint:
            self.endpoint = endpoint
            where = self.where = _endpoint_where(endpoint)
            if self.span is not None:
                self.span.set_attributes(where.attributes)
            elif self.started_ns:
                self._start_client_span(self.method.attributes(where, None))
        return self.trace

    def _start_client_span(self, attributes: dict[str, Any]) -> Span:
        span = self.span = _tracer().start_span(
            self.method.span_name, kind=SpanKind.CLIENT, attributes=attributes, start_time=self.started_ns
        )
        self.trace = span_trace(span.get_span_context())
        return span

    def cancelled(self, why: str) -> None:
        """A client's call the caller gave up on: ``error.type`` :data:`CANCELLED` and an error status saying ``why``.

        For the call shapes whose caller can leave without an exception of its own (a stream
        left by ``break`` or ``aclose()``, a fan-out's request cancelled when the fan-out ended),
        and for theirs cancelled by a cancel scope or a deadline: one outcome whatever the backend.
        """
        self.error = CANCELLED
        span = self.span
        if span is None and self.started_ns:  # given up before any attempt
            span = self._start_client_span(self.method.attributes(None, CANCELLED))
        if span is not None:
            span.set_attribute("error.type", CANCELLED)
            span.set_status(Status(StatusCode.ERROR, why))

    def failed(self, exc: BaseException) -> None:
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        self.error = name
        span = self.span
        if span is None and self.started_ns:  # a client's call that failed before any attempt
            span = self._start_client_span(self.method.attributes(None, name))
        if span is not None:
            span.set_attribute("error.type", name)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


def start_client_call(name: str, request_size: int) -> CallRecord:
    """The caller's record of a call of ``name`` (``component.method``), with the trace context to send."""
    method = _method(name)
    record = CallRecord(method, request_size, False)
    if TRACE_API._TRACER_PROVIDER is not None:
        record.started_ns = time.time_ns()  # the span starts at the first attempt (CallRecord.replica)
    elif current_otel_context():  # no span of ours, but the caller's trace goes on
        record.trace = client_trace()
    if METRICS_API._METER_PROVIDER is not None:
        record.instruments = _instruments()
        record.started = time.perf_counter()
    return record


def client_record(name: str, request_size: int) -> CallRecord | None:
    """:func:`start_client_call` once an SDK is configured, else None.

    For the call shapes other than a stub's unary call (streams, fan-out, affinity), whose
    cost per call is not worth inlining this test for: the unary stub inlines it.
    """
    if TRACE_API._TRACER_PROVIDER is None and METRICS_API._METER_PROVIDER is None:
        return None
    return start_client_call(name, request_size)


def start_server_call(name: str, trace: TraceContext | None, peer_address: str, request_size: int) -> CallRecord:
    """The server's record of a call of ``name``: its span is a child of the caller's when the request carried one."""
    method = _method(name)
    record = CallRecord(method, request_size, True)
    scheme, _, address = peer_address.partition("://")
    where = record.where = _TRANSPORTS.get(scheme, _INPROC)
    parent = None if trace is None else remote_parent(trace)
    if TRACE_API._TRACER_PROVIDER is not None:
        attributes = {**method.base, **where.attributes, "client.address": address}
        span = record.span = _tracer().start_span(
            method.span_name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        record.token = otel_context.attach(otel_trace.set_span_in_context(span, parent))
    elif parent is not None:
        record.token = otel_context.attach(parent)  # no span of ours, but the caller's trace goes on
    if METRICS_API._METER_PROVIDER is not None:
        record.instruments = _instruments()
        method.served = True
        method.in_flight += 1
        record.started = time.perf_counter()
    return record


def finish(record: CallRecord) -> None:
    """End the call's span and record its measurements."""
    span = record.span
    if span is not None:
        span.end()
    if record.token is not None:
        otel_context.detach(record.token)
    instruments = record.instruments
    if instruments is not None:
        method = record.method
        elapsed = (time.perf_counter() - record.started) * 1000
        attributes = method.attributes(record.where, record.error)
        # The duration in the span's context (an exemplar when the SDK's filter wants one); the sizes in none.
        context = _NO_SPAN if span is None else otel_trace.set_span_in_context(span, _NO_SPAN)
        if record.server:
            method.in_flight -= 1
            instruments.server_duration.record(elapsed, attributes, context)
            instruments.server_request_size.record(record.request_size, attributes, _NO_SPAN)
            if record.response_size is not None:
                instruments.server_response_size.record(record.response_size, attributes, _NO_SPAN)
        else:
            instruments.client_duration.record(elapsed, attributes, context)
            instruments.client_request_size.record(record.request_size, attributes, _NO_SPAN)


def end_client_call(record: CallRecord, exc: BaseException | None) -> None:
    """:func:`finish` a client's call that raised ``exc`` (None: succeeded) in a task of the caller's.

    The backend's cancellation (a cancel scope, a deadline) is recorded as :data:`CANCELLED`,
    any other exception as its type.
    """
    if exc is not None:
        failed_or_cancelled(record, exc)
    finish(record)


def failed_or_cancelled(record: CallRecord, exc: BaseException) -> None:
    """Record that ``exc`` ended the call: as :data:`CANCELLED` when it is the backend's cancellation, else as itself.

    On a server, a cancelled handler was cancelled by its caller, its deadline or the server's
    drain; the server cannot tell which (the caller's span says).
    """
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        record.cancelled("cancelled")
    else:
        record.failed(exc)


def retried(record: CallRecord | None, attempt: int, error: BaseException) -> None:
    if record is None:
        return
    if record.span is not None:
        record.span.add_event("retry", {"attempt": attempt, "error": str(error)[:200]})
    if record.instruments is not None:
        record.instruments.retries.add(1, record.method.attributes(record.where, None), _NO_SPAN)


def retry_refused() -> None:
    if metrics_enabled():
        _instruments().refusals.add(1, None, _NO_SPAN)


def connection_change(delta: int) -> None:
    if metrics_enabled():
        _instruments().connections.add(delta, None, _NO_SPAN)
