"""The HandlerMap: how a 16-byte method key on the wire finds its handler."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from . import keys
from .component import component_spec
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


class HandlerMap:
    """MethodKey → handler. A key registered twice is an error, never an overwrite."""

    def __init__(self) -> None:
        self._handlers: dict[bytes, RegisteredHandler] = {}
        # The per-request lookup: the dict's own method, no Python frame in between.
        self.get: Callable[[bytes], RegisteredHandler | None] = self._handlers.get

    def set(self, component: str, method: str, handler: Handler) -> MethodKey:
        """Register one handler; returns its key."""
        key = keys.make_method_key(component, method)  # through the module: a test may make keys collide
        name = f"{component}.{method}"
        existing = self._handlers.get(key)
        if existing is not None:
            what = "registered twice" if existing.name == name else f"collides with {existing.name!r}"
            raise RegistrationError(f"method key of {name!r} {what}")
        self._handlers[key] = RegisteredHandler(name, handler, inspect.iscoroutinefunction(handler))
        return key

    def add_handlers(self, name: str | None, impl: object) -> None:
        """Register every method of the component ``impl`` (an instance of a ``@component`` class).

        ``name`` overrides the component's registered name when given.
        """
        spec = component_spec(impl)
        for method in spec.methods.values():
            self.set(name or spec.name, method.name, method.handler(impl))

    def __len__(self) -> int:
        return len(self._handlers)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._handlers)

    def names(self) -> list[str]:
        return sorted(h.name for h in self._handlers.values())
