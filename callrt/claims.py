"""Affinity, psrpc's claim-based selection: the replicas of a component bid for a call.

A method declares how much a replica wants a request with :func:`affinity`::

    @component
    class Rooms:
        def _fit(self, room: str, user: str) -> float:
            return 1.0 if room in self.rooms else 0.1

        @affinity(_fit)
        async def join(self, room: str, user: str) -> str: ...

The function gets the component instance and the call's decoded arguments and
returns a float: the higher, the better this replica fits; a negative value
declines (this replica will not take the call). A method without one claims
``1.0`` on every replica (psrpc's default).

Every server answers ``callrt.Affinity.claim(method, args)`` (registered by
``start_server`` next to ``callrt.Health``): it decodes ``args`` with the
method's own typed decoder and runs the method's affinity function. A client
stub made with :meth:`callrt.call.Client.by_affinity` asks every replica, picks
one by its :class:`~callrt.client.affinity.Selection` and sends the call there.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from .component import MethodSpec, component, component_spec, interface
from .connection.server import Server
from .context import current_call
from .errors import Internal, PermissionDenied, RegistrationError, UnknownMethod
from .handlers import HandlerMap

__all__ = ("AFFINITY", "DEFAULT_AFFINITY", "Affinity", "AffinityAPI", "AffinityFunction", "add_affinity", "affinity")

AFFINITY = "callrt.Affinity"
DEFAULT_AFFINITY = 1.0
"""What a replica claims for a method that declares no affinity function (psrpc's default)."""

AffinityFunction = Callable[..., float | Awaitable[float]]
"""``function(self, *args) -> float``: the component instance and the call's arguments; negative declines."""

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")
_AFFINITY_ATTR = "__callrt_affinity__"


def affinity(
    function: Callable[Concatenate[S, P], float | Awaitable[float]],
) -> Callable[[Callable[Concatenate[S, P], R]], Callable[Concatenate[S, P], R]]:
    """Declare how much a replica wants a call of the decorated method: ``@affinity(fit)``.

    ``function`` takes the component instance and the method's arguments (decoded
    with the method's types, positional in parameter order, keyword-only ones by
    name) and returns a float: higher is a better fit, negative declines. It may be
    ``async``. A private method defined above the decorated one reads best
    (``@affinity(_fit)``); type checkers then hold its parameters to the method's.
    It runs on the server's event loop for every claim, so it must be quick and
    must not block. Only calls through a stub made by ``client.by_affinity(...)``
    collect claims; a plain stub's calls go to the replica the balancer picks, as always.
    """
    if not callable(function):
        raise RegistrationError(f"@affinity takes a function (self, *args) -> float, not {function!r}")

    def mark(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
        label = getattr(method, "__qualname__", repr(method))
        try:
            wanted = list(inspect.signature(method).parameters.values())
            takes = inspect.signature(function)
        except (TypeError, ValueError) as exc:
            raise RegistrationError(f"{label}: @affinity: cannot read a signature: {exc}") from exc
        positional = [None for p in wanted if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keywords = {p.name: None for p in wanted if p.kind is p.KEYWORD_ONLY}
        try:
            takes.bind(*positional, **keywords)
        except TypeError as exc:
            names = ", ".join(p.name for p in wanted)
            raise RegistrationError(
                f"{label}: its affinity function must take the method's parameters ({names}): {exc}"
            ) from None
        setattr(method, _AFFINITY_ATTR, function)
        return method

    return mark


def affinity_of(method: Callable[..., Any]) -> AffinityFunction | None:
    """The affinity function ``method`` declared with :func:`affinity`, or None."""
    found: AffinityFunction | None = getattr(method, _AFFINITY_ATTR, None)
    return found


@interface(name=AFFINITY)
class AffinityAPI(Protocol):
    """The affinity component's interface: what a client asks each replica."""

    async def claim(self, method: str, args: bytes) -> float:
        """This replica's affinity for a call of ``method`` (``"component.method"``) with ``args``.

        ``args`` is the call's MessagePack argument array, as the call itself would carry it.
        Negative: declined. Raises :class:`~callrt.errors.UnknownMethod` for a method this
        server does not serve, and what the method's decoder raises for arguments that do not fit.
        """
        ...


class _Claimable:
    """One served method: its spec, the instance serving it, and its affinity function (or None)."""

    __slots__ = ("function", "instance", "spec")

    def __init__(self, spec: MethodSpec, instance: object, function: AffinityFunction | None) -> None:
        self.spec, self.instance, self.function = spec, instance, function

    async def affinity(self, args: tuple[Any, ...]) -> float:
        function = self.function
        if function is None:
            return DEFAULT_AFFINITY
        spec = self.spec
        keyword_only = spec.params[spec.positional :]
        kwargs = dict(zip(keyword_only, args[spec.positional :], strict=True)) if keyword_only else {}
        value: Any = function(self.instance, *args[: spec.positional], **kwargs)
        if inspect.isawaitable(value):
            value = await value
        # bool is an int; an affinity of True is a mistake, not 1.0.
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise Internal(f"{spec.full_name}: the affinity function returned {value!r}, not a number")
        return float(value)


@component(implements=AffinityAPI)
class Affinity:
    """Answers claims for the components one server serves."""

    def __init__(self, server: Server, components: Sequence[object]) -> None:
        self._server = server
        self._methods: dict[str, _Claimable] = {}
        for instance in components:
            if isinstance(instance, (HandlerMap, type)):
                continue  # a prepared table has no instances to ask; a class is start_server's error
            spec = component_spec(instance)
            for method in spec.methods.values():
                function = affinity_of(inspect.getattr_static(type(instance), method.name, None))
                self._methods[method.full_name] = _Claimable(method, instance, function)

    async def claim(self, method: str, args: bytes) -> float:
        server = self._server
        if server.draining:
            return -1.0  # it takes no new calls
        claimable = self._methods.get(method)
        if claimable is None:
            raise UnknownMethod(f"{method}: not served here (this server serves {server.handlers.served()})")
        component_name, _, name = method.rpartition(".")
        if server.health.get(component_name) is False or server.health.get("") is False:
            return -1.0  # the application said it is not serving
        policy = server.options.access
        serving = current_call() if policy is not None else None  # built on demand: only a policy needs it
        if policy is not None and serving is not None and not _allows(policy, serving.peer, component_name, name):
            raise PermissionDenied(f"{method}: the server's access policy does not allow this caller")
        return await claimable.affinity(claimable.spec.args_from_payload(args))


def _allows(policy: Callable[[Any, str, str], bool], peer: object, component_name: str, name: str) -> bool:
    try:
        return bool(policy(peer, component_name, name))
    except Exception:
        return False  # a policy that fails refuses, as it does for calls


def add_affinity(server: Server, components: Sequence[object]) -> None:
    """Register ``callrt.Affinity`` in ``server``'s handlers, answering for ``components``."""
    server.handlers.add_handlers(None, Affinity(server, components))
