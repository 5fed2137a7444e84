"""OpenTelemetry spans and metrics per call, on both sides, at no cost until an SDK is configured.

Once an SDK has set a tracer provider, each call has a CLIENT span on the
caller and a SERVER span (its child) around the handler, named
``component/method`` with the RPC semantic conventions' attributes
(``rpc.system`` = ``callrt``, ``rpc.service``, ``rpc.method``, the server's
address, ``network.transport``, ``error.type`` and an error status on
failure); retries are events on the client span. Once a meter provider is
set, calls are measured: ``rpc.client.duration`` and ``rpc.server.duration``
(ms), ``rpc.client.request.size``, ``rpc.server.request.size`` and
``rpc.server.response.size`` (bytes), ``callrt.server.calls_in_flight``,
``callrt.server.connections``, ``callrt.client.retries``,
``callrt.client.retry_budget_refusals`` and ``callrt.client.replicas`` (by
state), with the component, method and outcome as attributes.

Without providers callrt makes no span and records nothing: the API's no-op
objects still cost microseconds a call, so each call first reads the API's
two globals (:func:`tracing_enabled`, :func:`metrics_enabled`).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from contextvars import Token
from types import SimpleNamespace
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_internal  # its global meter provider: None until set
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .protocol import TraceContext
from .tracing import remote_parent

__all__ = (
    "CallRecord",
    "connection_change",
    "finish",
    "retried",
    "retry_refused",
    "start_client_call",
    "start_server_call",
    "watch_replicas",
)

# Where the API keeps its global meter provider (None until an SDK sets one).


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


_tracer = otel_trace.get_tracer("callrt")
_meter = otel_metrics.get_meter("callrt")
_client_duration = _meter.create_histogram(
    "rpc.client.duration", unit="ms", description="Calls, as the caller saw them"
)
_server_duration = _meter.create_histogram("rpc.server.duration", unit="ms", description="Calls, in the server")
_client_request_size = _meter.create_histogram("rpc.client.request.size", unit="By", description="Arguments sent")
_server_request_size = _meter.create_histogram("rpc.server.request.size", unit="By", description="Arguments received")
_server_response_size = _meter.create_histogram("rpc.server.response.size", unit="By", description="Results sent")
_in_flight = _meter.create_up_down_counter("callrt.server.calls_in_flight", description="Calls being served")
_connections = _meter.create_up_down_counter("callrt.server.connections", description="Connections served")
_retries = _meter.create_counter("callrt.client.retries", description="Calls tried again")
_refusals = _meter.create_counter("callrt.client.retry_budget_refusals", description="Retries the budget refused")

# The replica states of live clients, counted when metrics are read.
_replica_states: dict[int, Callable[[], Iterable[str]]] = {}


def _observe_replicas(options: CallbackOptions) -> Iterable[Observation]:
    counts: dict[str, int] = {}
    for states in list(_replica_states.values()):
        for state in states():
            counts[state] = counts.get(state, 0) + 1
    return [Observation(n, {"state": state}) for state, n in counts.items()]


_meter.create_observable_gauge("callrt.client.replicas", [_observe_replicas], description="Replicas by state")


def watch_replicas(owner: object, states: Callable[[], Iterable[str]]) -> None:
    """Count ``states()`` (one per replica) in ``callrt.client.replicas`` while ``owner`` lives."""
    key = id(owner)
    _replica_states[key] = states
    weakref.finalize(owner, _replica_states.pop, key, None)


def _attributes(name: str) -> dict[str, str]:
    service, _, method = name.rpartition(".")
    return {"rpc.system": "callrt", "rpc.service": service, "rpc.method": method}


class CallRecord:
    """One call's span (current while it runs on this side) and measurements."""

    __slots__ = ("attributes", "duration", "response_size", "span", "started", "token")

    def __init__(self, name: str, kind: SpanKind, parent: otel_context.Context | None, extra: dict[str, str]) -> None:
        self.attributes = _attributes(name) | extra
        service, _, method = name.rpartition(".")
        self.span: Span | None = None
        self.token: Token[otel_context.Context] | None = None
        if tracing_enabled():
            self.span = _tracer.start_span(f"{service}/{method}", context=parent, kind=kind, attributes=self.attributes)
            self.token = otel_context.attach(otel_trace.set_span_in_context(self.span, parent))
        elif parent is not None:
            self.token = otel_context.attach(parent)  # no span of ours, but the caller's trace goes on
        self.duration = _client_duration if kind is SpanKind.CLIENT else _server_duration
        self.started = time.perf_counter() if metrics_enabled() else 0.0
        self.response_size: int | None = None  # the server's, once it has replied

    def set(self, key: str, value: str) -> None:
        self.attributes[key] = value
        if self.span is not None:
            self.span.set_attribute(key, value)

    def failed(self, exc: BaseException) -> None:
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        self.attributes["error.type"] = name
        if self.span is not None:
            self.span.set_attribute("error.type", name)
            self.span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


def start_client_call(name: str, request_size: int) -> CallRecord:
    """The caller's record of a call of ``name`` (``component.method``); its span is made current."""
    record = CallRecord(name, SpanKind.CLIENT, None, {})
    if record.started:
        _client_request_size.record(request_size, record.attributes)
    return record


def start_server_call(name: str, trace: TraceContext | None, peer_address: str, request_size: int) -> CallRecord:
    """The server's record of a call of ``name``: its span is a child of the caller's when the request carried one."""
    scheme, _, address = peer_address.partition("://")
    extra = {"network.transport": {"tcp": "tcp", "unix": "unix"}.get(scheme, "inproc"), "client.address": address}
    record = CallRecord(name, SpanKind.SERVER, None if trace is None else remote_parent(trace), extra)
    if record.started:
        _server_request_size.record(request_size, _metric_attributes(record.attributes))
        _in_flight.add(1, _attributes(name))  # without the outcome, which only the end knows
    return record


def _metric_attributes(attributes: dict[str, str]) -> dict[str, str]:
    """A server call's attributes for metrics: without ``client.address``, the span's alone.

    The caller's address and port differ per connection: as a metric attribute (a Prometheus label)
    it would make a new time series of every connection.
    """
    return {key: value for key, value in attributes.items() if key != "client.address"}


def finish(record: CallRecord) -> None:
    """End the call's span and record its measurements."""
    if record.span is not None:
        record.span.end()
    if record.token is not None:
        otel_context.detach(record.token)
    if record.started:
        attributes = record.attributes
        if record.duration is _server_duration:
            attributes = _metric_attributes(attributes)
        record.duration.record((time.perf_counter() - record.started) * 1000, attributes)
        if record.duration is _server_duration:
            _in_flight.add(-1, {key: attributes[key] for key in ("rpc.system", "rpc.service", "rpc.method")})
            if record.response_size is not None:
                _server_response_size.record(record.response_size, attributes)


def retried(record: CallRecord | None, attempt: int, error: BaseException) -> None:
    if record is None:
        return
    if record.span is not None:
        record.span.add_event("retry", {"attempt": attempt, "error": str(error)[:200]})
    if record.started:
        _retries.add(1, record.attributes)


def retry_refused() -> None:
    if metrics_enabled():
        _refusals.add(1)


def connection_change(delta: int) -> None:
    if metrics_enabled():
        _connections.add(delta)
