"""W3C trace context between OpenTelemetry and the request frame (opentelemetry-api only).

The client puts the current span's context into each request; the server
makes the received context the current one while the handler runs, so a span
the handler starts is a child of the caller's span. With no SDK configured the
current span is invalid and nothing is sent.

Spans and metrics per call are :mod:`callrt.telemetry`'s.

A received ``tracestate`` is peer bytes: it is checked here against the W3C
grammar (at most 32 ``key=value`` list-members, the spec's key and value
characters, at most 512 characters in all) before OpenTelemetry sees it, and
an invalid one is dropped without a word (the trace and span ids still
propagate). OpenTelemetry's own parser logs an invalid header verbatim, once
per request: a peer could flood the log, or forge log lines with a newline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)

from .protocol import TraceContext

__all__ = (
    "client_trace",
    "current_otel_context",
    "parse_tracestate",
    "remote_parent",
    "server_context",
    "span_trace",
)

_INVALID = otel_trace.INVALID_SPAN_CONTEXT

#: The longest tracestate accepted; W3C asks vendors to propagate at least this much.
MAX_TRACESTATE_LENGTH = 512
#: W3C: "There can be a maximum of 32 list-members in a list."
MAX_TRACESTATE_MEMBERS = 32

# W3C trace-context, tracestate: key = simple-key / multi-tenant-key; value = 0*255(chr) nblk-chr.
_MEMBER = re.compile(
    r"([a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)


def parse_tracestate(header: str) -> TraceState | None:
    """``header`` as a TraceState, or ``None`` when it is not a valid W3C tracestate (never logged).

    Bounded work: anything over :data:`MAX_TRACESTATE_LENGTH` characters is
    refused before it is looked at. Empty list-members are allowed, as the
    spec says; duplicate keys make the whole header invalid.
    """
    if len(header) > MAX_TRACESTATE_LENGTH or not header.isascii():
        return None
    pairs: dict[str, str] = {}
    for member in header.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        match = _MEMBER.fullmatch(member)
        if match is None:
            return None
        key, value = match.groups()
        if key in pairs or len(pairs) == MAX_TRACESTATE_MEMBERS:
            return None
        pairs[key] = value
    # Every pair passed the same grammar TraceState checks, so it has nothing to log.
    return TraceState(list(pairs.items()))


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
    return span_trace(otel_trace.get_current_span().get_span_context())


def span_trace(ctx: SpanContext) -> TraceContext | None:
    """A span's context as a frame field, or ``None`` when it is not valid."""
    if ctx is _INVALID or not ctx.is_valid:
        return None
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    return TraceContext(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"), int(ctx.trace_flags), state)


def remote_parent(trace: TraceContext) -> otel_context.Context:
    """A context whose current span is the caller's (remote) span, from the request's trace field.

    An invalid ``tracestate`` is left out (see :func:`parse_tracestate`); the ids are kept.
    """
    span_context = SpanContext(
        trace_id=int.from_bytes(trace.trace_id, "big"),
        span_id=int.from_bytes(trace.span_id, "big"),
        is_remote=True,
        trace_flags=TraceFlags(trace.flags),
        trace_state=parse_tracestate(trace.tracestate) if trace.tracestate else None,
    )
    return otel_trace.set_span_in_context(NonRecordingSpan(span_context))


def server_context(trace: TraceContext) -> object:
    """Make ``trace`` the current (remote parent) context; returns the token ``opentelemetry.context.detach`` takes."""
    return otel_context.attach(remote_parent(trace))
