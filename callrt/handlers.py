"""The HandlerMap: how a 16-byte method key on the wire finds its handler."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from . import keys
from .component import AwaitableMethod, ComponentSpec, component_spec
from .errors import RegistrationError
from .keys import MethodKey

__all__ = ("Handler", "HandlerMap", "RegisteredHandler")

Handler = Callable[[bytes], bytes] | Callable[[bytes], Awaitable[bytes]]
"""Arguments' bytes in, result's bytes out; sync or async."""


@dataclass(frozen=True, slots=True)
class RegisteredHandler:
    name: str  # "<component>.<method>", for errors, logs and spans
    handler: Handler
    is_async: bool
    # A sync handler run on the reading path itself (``@inline``); other sync handlers run
    # in a worker thread, so that one that blocks cannot stall the event loop.
    inline: bool = False
    # The ``@component`` spec the handler was made from (``add_handlers``), for reflection; None for a raw handler.
    component: ComponentSpec | None = None
    # A stream method's handler: the connection gives it a StreamChannel (protocol version 3).
    stream: bool = False
    # An async unary component method in parts, for a shell that awaits the method itself
    # instead of ``handler``'s coroutine around it.
    awaitable: AwaitableMethod | None = None


class HandlerMap:
    """MethodKey → handler. A key registered twice is an error, never an overwrite."""

    def __init__(self) -> None:
        self._handlers: dict[bytes, RegisteredHandler] = {}
        # The per-request lookup: the dict's own method, no Python frame in between.
        self.get: Callable[[bytes], RegisteredHandler | None] = self._handlers.get
        self._served: tuple[int, str] | None = None  # served(), and the table's size it was made at

    def set(
        self,
        component: str,
        method: str,
        handler: Handler,
        *,
        inline: bool = False,
        spec: ComponentSpec | None = None,
        stream: bool = False,
        awaitable: AwaitableMethod | None = None,
    ) -> MethodKey:
        """Register one handler; returns its key.

        A sync ``handler`` runs in a worker thread, or on the event loop with ``inline=True``
        (for small functions that never block). ``spec``, the ``@component`` that ``method``
        belongs to, lets reflection describe the method's types. ``awaitable`` is an
        async ``handler``'s method in parts (:meth:`~callrt.component.MethodSpec.awaitable`).
        """
        key = keys.make_method_key(component, method)  # through the module: a test may make keys collide
        name = f"{component}.{method}"
        existing = self._handlers.get(key)
        if existing is not None:
            what = "registered twice" if existing.name == name else f"collides with {existing.name!r}"
            raise RegistrationError(f"method key of {name!r} {what}")
        is_async = inspect.iscoroutinefunction(handler)
        self._handlers[key] = RegisteredHandler(
            name, handler, is_async, inline and not is_async, spec, stream, awaitable
        )
        return key

    def add_handlers(self, name: str | None, impl: object) -> None:
        """Register every method of the component ``impl`` (an instance of a ``@component`` class).

        ``name`` overrides the component's registered name when given.
        """
        spec = component_spec(impl)
        for method in spec.methods.values():
            awaitable = method.awaitable(impl) if method.is_async and not method.stream else None
            self.set(
                name or spec.name,
                method.name,
                method.handler(impl) if awaitable is None else awaitable.run,
                inline=method.inline,
                spec=spec,
                stream=bool(method.stream),
                awaitable=awaitable,
            )

    def __len__(self) -> int:
        return len(self._handlers)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._handlers)

    def names(self) -> list[str]:
        return sorted(h.name for h in self._handlers.values())

    def served(self, limit: int = 1000) -> str:
        """What this table serves, for an unknown method's error: ``"shop.Cart (add, total); ..."``, cut at ``limit``.

        The application's components only: callrt's own (``callrt.Health``, ``callrt.Reflection``)
        are on every server. Computed once per size of the table: a flood of unknown keys costs
        no more than a lookup each.
        """
        cached = self._served
        if cached is not None and cached[0] == len(self._handlers):
            return cached[1]
        by_component: dict[str, list[str]] = {}
        for name in self.names():
            component, _, method = name.rpartition(".")
            if not component.startswith("callrt."):
                by_component.setdefault(component, []).append(method)
        text = "; ".join(f"{c} ({', '.join(ms)})" for c, ms in by_component.items())
        if len(text) > limit:
            text = text[: limit - 5].rsplit(";", 1)[0] + "; ..."
        self._served = (len(self._handlers), text)
        return text
