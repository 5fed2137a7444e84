"""Reflection: every server answers what it serves (``callrt.Reflection``), with each method's types as JSON Schema.

``describe()`` lists the components and methods of the server's handler map
(not ``callrt.Reflection`` itself), each parameter's and result's JSON Schema
(made by msgspec from the method's type hints; Structs, dataclasses and enums
are ``$ref`` s into the shared ``$defs``) and whether the method is retriable.
A method registered as a raw handler (``HandlerMap.set`` without a spec) is
listed with ``params`` of None: its types are unknown.

``ServerOptions(reflection=False)`` turns it off. The ``callrt`` CLI
(``callrt list``, ``callrt call``) reads it.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Protocol

import msgspec

from .component import ComponentSpec, component, inline, interface
from .handlers import HandlerMap

__all__ = (
    "REFLECTION",
    "ComponentInfo",
    "MethodInfo",
    "ParamInfo",
    "Reflection",
    "ReflectionAPI",
    "ServiceInfo",
    "add_reflection",
    "describe",
)

REFLECTION = "callrt.Reflection"
_REF_TEMPLATE = "#/$defs/{name}"


class ParamInfo(msgspec.Struct, frozen=True):
    """One parameter: its name, its JSON Schema, and whether a call must pass it."""

    name: str
    schema: dict[str, Any]
    required: bool = True  # False: it has a default, and a call may leave it out when it is trailing
    keyword_only: bool = False
    # The default as a JSON-able value, when it has one that is.
    default: Any | msgspec.UnsetType = msgspec.UNSET


class MethodInfo(msgspec.Struct, frozen=True):
    name: str
    params: list[ParamInfo] | None  # None: a raw handler, types unknown
    result: dict[str, Any]
    retriable: bool = True
    signature: str = ""  # for people: "add(a: int, b: int) -> int"
    # A stream method's shape ("server", "client", "bidirectional"), "" for a unary one. For one
    # that yields items, ``result`` is the schema of an item; ``items`` is that of the caller's items.
    stream: str = ""
    items: dict[str, Any] = msgspec.field(default_factory=dict)


class ComponentInfo(msgspec.Struct, frozen=True):
    name: str
    methods: list[MethodInfo]


class ServiceInfo(msgspec.Struct, frozen=True):
    """What a server serves; the schemas' ``$ref`` s point into ``defs`` (``"$defs"`` on the wire)."""

    components: list[ComponentInfo]
    defs: dict[str, Any] = msgspec.field(default_factory=dict, name="$defs")

    def component(self, name: str) -> ComponentInfo | None:
        return next((c for c in self.components if c.name == name), None)


@interface(name=REFLECTION)
class ReflectionAPI(Protocol):
    """The reflection component's interface: a client's ``stub(ReflectionAPI)``."""

    async def describe(self) -> ServiceInfo: ...


@component(implements=ReflectionAPI)
class Reflection:
    """Describes ``handlers`` (computed at the first call, again only if the table changes)."""

    def __init__(self, handlers: HandlerMap) -> None:
        self._handlers = handlers
        self._cached: tuple[int, ServiceInfo] | None = None

    @inline
    def describe(self) -> ServiceInfo:
        cached = self._cached
        if cached is None or cached[0] != len(self._handlers):
            cached = self._cached = (len(self._handlers), describe(self._handlers))
        return cached[1]


def add_reflection(handlers: HandlerMap) -> None:
    """Register ``callrt.Reflection`` in ``handlers``, describing them."""
    handlers.add_handlers(None, Reflection(handlers))


def describe(handlers: HandlerMap) -> ServiceInfo:
    """The description of every method in ``handlers`` but reflection's own."""
    entries: dict[str, list[tuple[str, ComponentSpec | None]]] = {}
    for key in handlers:
        entry = handlers.get(key)
        assert entry is not None
        name, _, method = entry.name.rpartition(".")
        if name != REFLECTION:
            entries.setdefault(name, []).append((method, entry.component))
    entries = {name: sorted(entries[name], key=lambda m: m[0]) for name in sorted(entries)}
    # Every type of every method, for one schema_components() call: one shared $defs.
    types: list[Any] = []
    hints: dict[tuple[str, str], tuple[list[Any], Any]] = {}
    stream_hints: dict[tuple[str, str], dict[str, Any]] = {}  # a stream method's own hints, for its signature
    for name, methods in entries.items():
        for method, spec in methods:
            if spec is None or method not in spec.methods:
                continue
            try:
                fn = inspect.getattr_static(spec.cls, method)
                resolved = typing.get_type_hints(fn, include_extras=True)  # msgspec.Meta constraints
            except Exception:
                continue  # described as untyped
            mspec = spec.methods[method]
            params = [resolved.get(p, Any) for p in mspec.params]
            result = resolved.get("return", Any)
            items: Any = None
            if mspec.stream is not None:
                if mspec.stream.yields:
                    result = stream_item_type(result)
                if mspec.stream.takes is not None:
                    items = stream_item_type(resolved.get(list(mspec.stream.signature.parameters)[mspec.stream.takes]))
            hints[name, method] = (params, None if result is type(None) else result)
            types.extend(params)
            types.append(hints[name, method][1])
            if mspec.stream is not None:
                types.append(items)
                stream_hints[name, method] = resolved
    schemas, defs = _schemas(types)
    at = iter(schemas)
    components = []
    for name, methods in entries.items():
        infos = []
        for method, spec in methods:
            typed = hints.get((name, method))
            if typed is None or spec is None:
                infos.append(MethodInfo(method, None, {}, signature=f"{method}(...)"))
                continue
            mspec = spec.methods[method]
            param_types, result_type = typed
            sig = list(mspec.signature.parameters.values())
            params = []
            for i, p in enumerate(sig):
                default: Any = msgspec.UNSET
                if p.default is not p.empty:
                    try:
                        default = msgspec.to_builtins(p.default)
                    except (TypeError, ValueError):
                        pass
                params.append(ParamInfo(p.name, next(at), p.default is p.empty, i >= mspec.positional, default))
            result = next(at)
            if mspec.stream is None:
                shown = ", ".join(
                    f"{p.name}: {_type_name(t)}" + ("" if p.default is p.empty else f" = {p.default!r}")
                    for p, t in zip(sig, param_types, strict=True)
                )
                signature = f"{method}({shown}) -> {_type_name(result_type)}"
                infos.append(MethodInfo(method, params, result, mspec.retriable, signature))
                continue
            items_schema = next(at)
            resolved = stream_hints[name, method]
            shown = ", ".join(
                f"{p.name}: {_type_name(resolved.get(p.name, Any))}"
                + ("" if p.default is p.empty else f" = {p.default!r}")
                for p in mspec.stream.signature.parameters.values()
            )
            signature = f"{method}({shown}) -> {_type_name(resolved.get('return', Any))}"
            stream = mspec.stream.shape
            infos.append(MethodInfo(method, params, result, mspec.retriable, signature, stream, items_schema))
        components.append(ComponentInfo(name, infos))
    return ServiceInfo(components, defs)


def _schemas(types: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        schemas, defs = msgspec.json.schema_components(types, ref_template=_REF_TEMPLATE)
        return list(schemas), dict(defs)
    except Exception:
        pass  # one type msgspec has no schema for: the others keep theirs
    out: list[dict[str, Any]] = []
    all_defs: dict[str, Any] = {}
    for t in types:
        try:
            (schema,), defs = msgspec.json.schema_components([t], ref_template=_REF_TEMPLATE)
        except Exception:
            schema, defs = {}, {}
        out.append(dict(schema))
        all_defs.update(defs)
    return out, all_defs


def stream_item_type(annotation: object) -> Any:
    """``T`` of ``AsyncIterator[T]``, ``Iterator[T]`` and their kin; ``Any`` when it has none."""
    args = typing.get_args(annotation)
    return args[0] if args else Any


def _type_name(annotation: object) -> str:
    if annotation is None:
        return "None"
    return inspect.formatannotation(annotation).replace("typing.", "").replace("collections.abc.", "")
