"""W3C trace context between OpenTelemetry and the request frame (opentelemetry-api only).

The client puts the current span's context into each request; the server
makes the received context the current one while the handler runs, so a span
the handler starts is a child of the caller's span. With no SDK configured the
current span is invalid and nothing is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from .protocol import TraceContext

__all__ = ("client_trace", "current_otel_context", "detach", "server_context")

_INVALID = otel_trace.INVALID_SPAN_CONTEXT


def _context_reader() -> Callable[[], otel_context.Context]:
    # Every call reads the current context; the public get_current() takes three Python
    # calls to reach the ContextVar that the default runtime context keeps.
    var = getattr(otel_context._RUNTIME_CONTEXT, "_current_context", None)
    return var.get if isinstance(var, ContextVar) else otel_context.get_current


#: The current OpenTelemetry context; empty (falsy) when no span was ever made current.
current_otel_context = _context_reader()


def client_trace() -> TraceContext | None:
    """The current span's context as a frame field, or ``None`` when there is no valid span."""
    if not current_otel_context():
        return None  # an empty context holds no span: the common case without tracing
    ctx = otel_trace.get_current_span().get_span_context()
    if ctx is _INVALID or not ctx.is_valid:
        return None
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    return TraceContext(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"), int(ctx.trace_flags), state)


def server_context(trace: TraceContext) -> object:
    """Make ``trace`` the current (remote parent) context; returns a token for :func:`detach`."""
    span_context = SpanContext(
        trace_id=int.from_bytes(trace.trace_id, "big"),
        span_id=int.from_bytes(trace.span_id, "big"),
        is_remote=True,
        trace_flags=TraceFlags(trace.flags),
        trace_state=TraceState.from_header([trace.tracestate]) if trace.tracestate else None,
    )
    ctx = otel_trace.set_span_in_context(NonRecordingSpan(span_context))
    return otel_context.attach(ctx)


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]
