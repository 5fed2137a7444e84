"""Interceptors: ordered chains of async wrappers around calls, on the server and on the client.

An interceptor is an async function of the call and ``next``, the rest of the
chain; it returns what ``await next(call)`` returned, or raises instead::

    async def timed(call, next):
        start = time.perf_counter()
        try:
            return await next(call)
        finally:
            histogram.record(time.perf_counter() - start, {"method": call.method})

The first interceptor of ``ServerOptions.interceptors`` / ``ClientOptions.interceptors``
is the outermost. Either side can reject a call by raising (a
:class:`~callrt.errors.RemoteError` such as ``PermissionDenied`` chooses the
code the caller sees), time it, or pass ``next`` a changed call.

*Server side* (:data:`ServerInterceptor`): ``call`` is the
:class:`~callrt.context.CallContext` a handler gets from ``current_call()``
(method, metadata, caller, deadline, shard key, peer); ``next`` returns the
result's encoded bytes. Passing ``next`` a copy with other ``metadata``
(``dataclasses.replace(call, metadata={...})``) changes what the handler's
``current_call()`` sees. The chain runs after the access policy and before the
handler is given its arguments; a server with interceptors runs every call on
the async path (an ``@inline`` handler still runs on the event loop, a plain
``def`` in a worker thread).

*Client side* (:data:`ClientInterceptor`): ``call`` is a :class:`ClientCall`
(method, arguments, options, deadline); ``next`` returns the decoded result.
The chain wraps the whole call, retries included, once per call: a rejection
is not retried, and a timing interceptor measures what the caller waits.
``call.with_metadata(...)`` adds metadata; a ``with anyio.fail_after(...)``
around ``next`` shortens the deadline. The replica is known only once one is
picked: after ``next`` returns or raises, ``call.replica`` is the endpoint of
the last attempt (``None`` if none was made).

*Stream calls, on the client*: a client stream is awaited like a unary call,
and the chain wraps its whole call the same way. A server or bidirectional
stream is iterated by the caller after the stub returned it, so the chain
wraps its *opening*: it runs when the caller first asks for an item (or
enters ``async with``, or awaits the stream), and ``next`` picks a replica,
sends the request and returns the opened stream (what the chain returns is
not given to the caller, who iterates the stream itself). Rejecting it
raises in the caller's ``async for`` with nothing sent; metadata added is
kept for a retry of the opening; ``call.args`` holds the caller's iterable of
items, which an interceptor must not iterate. Fan-out runs the chain once per
replica's request, an affinity call once around its claims and its call.

An empty chain (the default) costs nothing per call: the stubs and the
handler table are then exactly what they are without interceptors; the choice
is made when a stub is created or a server starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec

from ._threads import run_in_thread
from .context import CallContext, CallOptions, current_call, current_deadline, serving_var
from .handlers import HandlerMap, RegisteredHandler

__all__ = (
    "ClientCall",
    "ClientInterceptor",
    "ClientNext",
    "ServerCall",
    "ServerInterceptor",
    "ServerNext",
    "intercept_client",
    "intercept_open",
    "intercept_handlers",
)

ServerCall = CallContext
"""What a server interceptor sees of a call: the handler's :func:`~callrt.context.current_call`."""

ServerNext = Callable[[ServerCall], Awaitable[bytes]]
ServerInterceptor = Callable[[ServerCall, ServerNext], Awaitable[bytes]]
"""``async def interceptor(call: ServerCall, next: ServerNext) -> bytes``."""


@dataclass(slots=True, kw_only=True)
class ClientCall:
    """What a client interceptor sees of a call.

    :ivar method: ``"component.method"``.
    :ivar args: the positional arguments, as the caller passed them (read them; to change
        the call, pass ``next`` a copy: ``dataclasses.replace(call, args=...)``).
    :ivar kwargs: the keyword arguments.
    :ivar options: the call's :class:`~callrt.context.CallOptions` (``None``: the defaults).
    :ivar deadline: the caller's deadline when the call began (``anyio.current_time()``
        terms; ``inf`` when it has none).
    :ivar replica: the endpoint of the last attempt, set as the call proceeds; ``None``
        until a replica is picked.
    """

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: CallOptions | None = None
    deadline: float = float("inf")
    replica: str | None = None

    @property
    def metadata(self) -> Mapping[str, str]:
        """The call's metadata (empty without any)."""
        options = self.options
        return {} if options is None or options.metadata is None else options.metadata

    def with_metadata(self, metadata: Mapping[str, str]) -> ClientCall:
        """A copy of this call whose metadata has ``metadata`` added (replacing equal keys)."""
        options = self.options or CallOptions()
        merged = {**self.metadata, **metadata}
        return dataclasses.replace(self, options=dataclasses.replace(options, metadata=merged))


ClientNext = Callable[[ClientCall], Awaitable[Any]]
ClientInterceptor = Callable[[ClientCall, ClientNext], Awaitable[Any]]
"""``async def interceptor(call: ClientCall, next: ClientNext) -> Any``."""


def _chain(interceptors: Sequence[Callable[[Any, Any], Awaitable[Any]]], last: Callable[[Any], Awaitable[Any]]) -> Any:
    """``last`` wrapped by ``interceptors``, the first outermost: a function of the call."""
    run = last
    for interceptor in reversed(interceptors):
        run = _link(interceptor, run)
    return run


def _link(interceptor: Callable[[Any, Any], Awaitable[Any]], inner: Callable[[Any], Awaitable[Any]]) -> Any:
    async def run(call: Any) -> Any:
        if type(call) is not ClientCall:
            return await interceptor(call, inner)

        # A client interceptor may hand on a copy: the replica recorded on the copy is copied back.
        async def next_(given: ClientCall) -> Any:
            try:
                return await inner(given)
            finally:
                if given is not call:
                    call.replica = given.replica

        return await interceptor(call, next_)

    return run


# -- server --------------------------------------------------------------------------


def intercept_handlers(
    handlers: HandlerMap, interceptors: Sequence[ServerInterceptor], limiter: anyio.CapacityLimiter | None
) -> HandlerMap:
    """A table of ``handlers`` each wrapped by ``interceptors``; ``handlers`` itself when there are none.

    A wrapped handler is async: it runs the chain, then the original handler (awaited if
    async, called on the loop if ``@inline``, else in a worker thread taken from ``limiter``).
    """
    if not interceptors:
        return handlers
    wrapped = HandlerMap()
    chain = tuple(interceptors)
    for key in handlers:
        entry = handlers.get(key)
        assert entry is not None
        handler = _wrap_handler(entry, chain, limiter)
        # The same key and entry (name, component), with the chain as an async handler.
        wrapped._handlers[key] = dataclasses.replace(entry, handler=handler, is_async=True, inline=False)  # pyright: ignore[reportPrivateUsage]
    return wrapped


def _wrap_handler(
    entry: RegisteredHandler, interceptors: tuple[ServerInterceptor, ...], limiter: anyio.CapacityLimiter | None
) -> Callable[[bytes], Awaitable[bytes]]:
    handler, is_async, inline = entry.handler, entry.is_async, entry.inline

    async def run_handler(payload: bytes) -> bytes:
        if is_async:
            return await handler(payload)  # type: ignore[misc,no-any-return]
        if inline:
            return handler(payload)  # type: ignore[return-value]
        return await run_in_thread(handler, payload, limiter)  # type: ignore[arg-type]

    async def intercepted(payload: bytes) -> bytes:
        original = current_call()
        assert original is not None  # the connection set the call being served

        async def last(call: ServerCall) -> bytes:
            if call is original:
                return await run_handler(payload)
            # A changed call: the handler's current_call() sees its metadata, caller and shard key.
            serving = serving_var.get()
            assert type(serving) is tuple
            request, name, _, peer = serving
            request = msgspec.structs.replace(
                request, metadata=tuple(call.metadata.items()), caller=call.caller, shard_key=call.shard_key
            )
            token = serving_var.set((request, name, call.deadline, peer))
            try:
                return await run_handler(payload)
            finally:
                serving_var.reset(token)

        return await _chain(interceptors, last)(original)  # type: ignore[no-any-return]

    intercepted.__name__ = intercepted.__qualname__ = f"{entry.name} (intercepted)"
    return intercepted


# -- client --------------------------------------------------------------------------


def intercept_client(
    interceptors: Sequence[ClientInterceptor],
    method: str,
    options: CallOptions | None,
    effective_deadline: Callable[[], float],
    attempt: Callable[[ClientCall], Awaitable[Any]],
) -> Callable[..., Awaitable[Any]]:
    """A stub method's call function: each call runs ``interceptors`` around ``attempt``, the call itself."""
    run = _chain(tuple(interceptors), attempt)

    async def call(*args: Any, **kwargs: Any) -> Any:
        deadline = effective_deadline()
        if serving_var.get() is not None:  # called from a handler: its deadline bounds this call too
            inherited = current_deadline()
            if inherited is not None and inherited < deadline:
                deadline = inherited
        return await run(ClientCall(method=method, args=args, kwargs=kwargs, options=options, deadline=deadline))

    return call


def intercept_open(
    interceptors: Sequence[ClientInterceptor], call: ClientCall, open_: Callable[[ClientCall], Awaitable[Any]]
) -> Awaitable[Any]:
    """A server or bidirectional stream's opening: ``open_`` (which returns the opened stream) run through ``interceptors``."""
    return _chain(tuple(interceptors), open_)(call)  # type: ignore[no-any-return]
