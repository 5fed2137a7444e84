"""Stubs: a component class's methods as async functions that call a remote replica.

:func:`remote_method` is the whole client side of one call, in one coroutine
with what it uses bound once when the stub is made, because it runs for every
call: bind and encode the arguments, pick a replica, send, wait, decode, and
retry as :mod:`~callrt.client.retries` allows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from .. import telemetry
from .._deadline import CANCELLED
from ..component import MethodSpec, _method_spec, caller_error, component_spec
from ..context import CallOptions, current_deadline, serving_var
from ..errors import ClosedError, CommunicationError, ErrorCode, RemoteError
from ..interceptors import ClientCall, ClientInterceptor, intercept_client
from ..telemetry import METRICS_API as metrics_api
from ..telemetry import TRACE_API as trace_api
from ..tracing import client_trace, current_otel_context
from .replicas import ManagedReplica, ReplicaSet
from .retries import Retrier
from .streams import stream_method

__all__ = ("CallPath", "StubMethod", "make_stub", "remote_method", "with_options")

T = TypeVar("T")

_REMOTE_ATTR = "__callrt_remote__"  # marks the functions remote_method() makes


class StubMethod(Protocol):
    """One remote method: ``await stub.method(*args)``; ``.options(CallOptions)`` for one call."""

    __signature__: inspect.Signature

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]: ...

    def options(self, options: CallOptions) -> StubMethod: ...


@dataclass(frozen=True, slots=True)
class CallPath:
    """What every call of one client goes through."""

    replicas: ReplicaSet
    retrier: Retrier
    effective_deadline: Callable[[], float]  # the caller's deadline, read once per call
    spin: float  # ClientOptions.optimistic_spin_duration
    interceptors: tuple[ClientInterceptor, ...] = ()  # ClientOptions.interceptors: empty, no wrapper
    spawn: Callable[..., object] | None = None  # starts a task in the client's task group (streams' senders)


class _Stub:
    def __init__(self, label: str, remake: Callable[[CallOptions | None], object]) -> None:
        self._label = label
        self._remake = remake  # the same stub with other options: with_options()

    def __repr__(self) -> str:
        return f"<{self._label}>"


def make_stub(path: CallPath, cls: Callable[..., T], options: CallOptions | None, name: str | None) -> T:
    """A stub of ``cls`` (an ``@interface`` or a ``@component`` class) whose calls go through ``path``."""
    spec = component_spec(cls)
    methods = spec.methods
    if name is not None and name != spec.name:
        methods = {m: _method_spec(name, m, getattr(cls, m), errors=spec.errors) for m in methods}
    stub = _Stub(f"{spec.name} stub", lambda options: make_stub(path, cls, options, name))
    for method in methods.values():
        setattr(stub, method.name, remote_method(path, method, options))
    return stub  # type: ignore[return-value]


def with_options(target: T, options: CallOptions) -> T:
    """``target``, a stub or one method of a stub, whose calls carry ``options``.

    Typed as ``target`` itself, so checkers keep the methods' argument and
    result types: ``await call.with_options(cart.add, CallOptions(shard_key=7))("ann", item)``,
    or ``call.with_options(cart, CallOptions(...))`` for a stub whose every
    call carries them. ``target`` is not changed.
    """
    if isinstance(target, _Stub):
        return target._remake(options)  # type: ignore[return-value]
    remake = getattr(target, "options", None)
    if not getattr(target, _REMOTE_ATTR, False) or not callable(remake):
        raise TypeError(f"with_options() takes a stub or a method of one, not {target!r}")
    return remake(options)  # type: ignore[no-any-return]


def remote_method(
    path: CallPath, method: MethodSpec, options: CallOptions | None = None, observer: ClientCall | None = None
) -> StubMethod:
    """``method`` as an async function of its arguments: ``await f(*args)`` calls it remotely.

    ``f.options(CallOptions(...))`` is the same method with other options. With client
    interceptors, each call runs their chain around the call (made with the chain's
    ``ClientCall`` as ``observer``, which learns each attempt's replica).
    """
    if method.stream is not None:  # items as they come, not one result (streams.py runs its own chain)
        streaming: StubMethod = stream_method(path, method, options)  # type: ignore[assignment]
        streaming.options = lambda options: remote_method(path, method, options)  # type: ignore[method-assign]
        streaming.__signature__ = method.stream.signature
        setattr(streaming, _REMOTE_ATTR, True)
        return streaming
    encode_args, key, decode_result = method.encode_args, method.key, method.decode_result
    arity = len(method.params)
    replicas, retrier, effective_deadline, spin = path.replicas, path.retrier, path.effective_deadline, path.spin
    pick, wait_for_session = replicas.balancer.pick, replicas.wait_for_session
    budget, retriable = retrier.budget, method.retriable

    async def call(*args: Any, **kwargs: Any) -> Any:
        if replicas.closed:
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
        if deadline == CANCELLED:  # inlined cancellation_first: the caller's cancellation, not a request
            await checkpoint_if_cancelled()
        # A CLIENT span (from the first attempt) and measurements once an SDK is configured; the
        # request carries the span's trace context, so the server's span is its child.
        span = (
            telemetry.start_client_call(method.full_name, len(payload))
            if trace_api._TRACER_PROVIDER is not None
            or metrics_api._METER_PROVIDER is not None  # tracing_enabled() or metrics_enabled(), inlined
            else None
        )
        # (Without a record: an empty context holds no span, the common case.)
        trace = span.trace if span is not None else client_trace() if current_otel_context() else None
        budget.calls += 1
        attempt = 0
        try:
            while True:
                attempt += 1
                # The balancer holds only the replicas this client gave it.
                replica: ManagedReplica | None = pick(options)  # type: ignore[assignment]
                session = None if replica is None else replica.session
                if session is None:
                    # This wait (until the deadline, or pick_timeout) is the call's whole wait for a
                    # replica: its Unreachable is final, not retried into another full wait.
                    session = await wait_for_session(options, deadline, method.full_name)
                if observer is not None:
                    observer.replica = str(session.endpoint)
                if span is not None:
                    trace = span.replica(session.endpoint)
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
                    if replicas.closed:
                        raise ClosedError("the connection is closed") from exc
                    delay = retrier.delay(exc, retriable, options, attempt, deadline)
                    if delay is None:
                        raise
                    telemetry.retried(span, attempt + 1, exc)
                    await anyio.sleep(delay)
                except RemoteError as exc:
                    # Only this side knows the method's name and the exceptions its component declared.
                    error = caller_error(method, exc)
                    if error is exc:
                        raise
                    raise error from exc
        except BaseException as exc:
            if span is not None:
                telemetry.failed_or_cancelled(span, exc)  # a cancelled call is "cancelled", as a stream's
            raise
        finally:
            if span is not None:
                telemetry.finish(span)

    if path.interceptors and observer is None:  # the chain, around every call of this method
        call = intercept_client(  # type: ignore[assignment]
            path.interceptors,
            method.full_name,
            options,
            effective_deadline,
            lambda c: remote_method(path, method, c.options, c)(*c.args, **c.kwargs),
        )
    call.__name__ = method.name
    call.__qualname__ = f"{method.full_name} (remote)"  # in reprs and tracebacks
    stub_method: StubMethod = call  # type: ignore[assignment]
    stub_method.options = lambda options: remote_method(path, method, options)  # type: ignore[method-assign]
    stub_method.__signature__ = method.signature
    setattr(stub_method, _REMOTE_ATTR, True)
    return stub_method
