"""Components: plain classes whose public methods become RPC methods.

``@component`` inspects a class once, at decoration, and records for each
public method its wire key, its signature, whether it is retriable, and typed
msgspec codecs built from its annotations. The server turns a
:class:`MethodSpec` plus an instance into a bytes-in/bytes-out handler; the
client turns it into a stub method. Both sides therefore agree on the
encoding by construction: arguments travel as a MessagePack array in
parameter order, results as a single MessagePack value.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import msgspec

from .errors import Internal, InvalidArgument, RegistrationError
from .keys import MethodKey, make_method_key

__all__ = ("ComponentSpec", "MethodSpec", "component", "component_spec", "inline", "interface", "not_retriable")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_SPEC_ATTR = "__callrt_component__"
_NOT_RETRIABLE_ATTR = "__callrt_not_retriable__"
_INLINE_ATTR = "__callrt_inline__"
_INTERFACE_ATTR = "__callrt_interface__"  # set on a class marked @interface, in its own __dict__
_PATH = re.compile(r"`\$\[(\d+)\]")


def not_retriable(method: F) -> F:
    """Mark a component method as unsafe to repeat.

    Such a method is retried only when its request provably never left the
    client; other communication errors reach the caller.
    """
    setattr(method, _NOT_RETRIABLE_ATTR, True)
    return method


def inline(method: F) -> F:
    """Run a plain ``def`` method on the event loop instead of a worker thread.

    For small pure functions (a lookup, a computation of microseconds): they
    skip the thread hop, the fastest way to serve a call. A method marked
    ``@inline`` must never block; one that holds the loop longer than
    ``ServerOptions.slow_inline_handler`` is logged.
    """
    if inspect.iscoroutinefunction(method):
        raise RegistrationError(f"{method.__qualname__}: @inline is for plain def methods; async ones run on the loop already")
    setattr(method, _INLINE_ATTR, True)
    return method


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """What both sides know about one RPC method."""

    component: str
    name: str
    key: MethodKey
    signature: inspect.Signature
    params: tuple[str, ...]
    positional: int  # how many of ``params`` can be passed by position (the rest are keyword-only)
    is_async: bool
    retriable: bool
    inline: bool  # a plain def marked @inline: runs on the event loop, not in a worker thread
    encode_args: Callable[[tuple[Any, ...]], bytes]
    decode_args: Callable[[bytes], tuple[Any, ...]]
    encode_result: Callable[[Any], bytes]
    decode_result: Callable[[bytes], Any]

    @property
    def full_name(self) -> str:
        return f"{self.component}.{self.name}"

    def args_from_payload(self, payload: bytes) -> tuple[Any, ...]:
        """Decode and type-check arguments; a mismatch is an InvalidArgument naming the parameter."""
        try:
            return self.decode_args(payload)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise self._argument_error(exc) from None

    def _argument_error(self, exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidArgument:
        if isinstance(exc, msgspec.ValidationError):
            return InvalidArgument(self._describe(str(exc)))
        return InvalidArgument(f"{self.full_name}: malformed arguments: {exc}")

    def _result_error(self, exc: Exception) -> Internal:
        return Internal(f"{self.full_name}: result cannot be encoded: {exc}")

    def payload_from_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """Bind a call's arguments to the signature and encode them."""
        if kwargs or len(args) != len(self.params):
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.full_name}(): {exc}") from None
            bound.apply_defaults()
            args = tuple(bound.arguments[p] for p in self.params)
        try:
            return self.encode_args(args)
        except (TypeError, ValueError, OverflowError) as exc:
            bad = next((p for p, a in zip(self.params, args, strict=True) if not _encodable(a)), None)
            where = f" argument {bad!r}" if bad else ""
            raise InvalidArgument(f"{self.full_name}:{where} cannot be encoded: {exc}") from None

    def _describe(self, message: str) -> str:
        match = _PATH.search(message)
        if match and int(match.group(1)) < len(self.params):
            param = self.params[int(match.group(1))]
            message = message.replace(match.group(0), f"`{param}", 1)
            return f"{self.full_name}: invalid argument {param!r}: {message}"
        return f"{self.full_name}: invalid arguments: {message}"

    def handler(self, instance: object) -> Callable[[bytes], bytes] | Callable[[bytes], Awaitable[bytes]]:
        """A bytes-in, bytes-out handler calling this method on ``instance``."""
        method = getattr(instance, self.name)
        decode, encode = self.decode_args, self.encode_result
        argument_error, result_error = self._argument_error, self._result_error
        keyword_only = self.params[self.positional :]
        if keyword_only:
            # Arguments travel in parameter order; keyword-only ones are passed back by name.
            positional, plain = self.positional, method

            def method(*args: Any) -> Any:
                return plain(*args[:positional], **dict(zip(keyword_only, args[positional:], strict=True)))

        # Each handler is one Python frame around the method: it runs once per call.
        if self.is_async:

            async def async_handler(payload: bytes) -> bytes:
                try:
                    args = decode(payload)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    raise argument_error(exc) from None
                result = await method(*args)
                try:
                    return encode(result)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise result_error(exc) from None

            return async_handler

        def sync_handler(payload: bytes) -> bytes:
            try:
                args = decode(payload)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise argument_error(exc) from None
            result = method(*args)
            try:
                return encode(result)
            except (TypeError, ValueError, OverflowError) as exc:
                raise result_error(exc) from None

        return sync_handler


def _encodable(value: object) -> bool:
    try:
        msgspec.msgpack.encode(value)
    except Exception:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    """A component's name and its methods, by method name."""

    name: str
    cls: type
    methods: dict[str, MethodSpec]


@overload
def component(cls: type[T], /) -> type[T]: ...
@overload
def component(*, name: str | None = None, implements: type | None = None) -> Callable[[type[T]], type[T]]: ...


def component(cls: type[T] | None = None, /, *, name: str | None = None, implements: type | None = None) -> Any:
    """Make a class a component; its public methods (sync or async) become RPC methods.

    The default name is ``"<module>.<qualname>"``. Every public method must
    have named parameters (no ``*args``/``**kwargs``); annotations choose the
    encoding, and a missing one means "any MessagePack value".

    ``implements=API`` (a class marked :func:`interface`) declares the
    interface that clients call it through: the component takes the
    interface's name, and its public methods must be the interface's with the
    same parameters, defaults and types (a plain ``def`` may implement an
    ``async def``), checked here with a RegistrationError. A subclass of an
    interface implements it without saying so.
    """

    def decorate(cls: type[T]) -> type[T]:
        declared = implements if implements is not None else _inherited_interface(cls)
        spec = _build_spec(cls, name or f"{cls.__module__}.{cls.__qualname__}") if declared is None else None
        setattr(cls, _SPEC_ATTR, spec or _implementation_spec(cls, declared, name))
        return cls

    return decorate(cls) if cls is not None else decorate


def component_spec(cls: object) -> ComponentSpec:
    """The spec ``@component`` recorded on ``cls`` (or on its class, for an instance)."""
    owner = cls if isinstance(cls, type) else type(cls)
    spec = getattr(owner, _SPEC_ATTR, None)
    if not isinstance(spec, ComponentSpec):
        raise RegistrationError(f"{cls!r} is not a @component")
    if _INTERFACE_ATTR in vars(spec.cls) and (owner is not spec.cls or owner is not cls):
        if owner is not spec.cls:
            raise RegistrationError(
                f"{owner.__qualname__} subclasses interface {spec.name!r}: mark it @component (implements it)"
            )
        raise RegistrationError(f"{owner.__qualname__} is interface {spec.name!r}: serve a @component that implements it")
    return spec


@overload
def interface(cls: type[T], /) -> type[T]: ...
@overload
def interface(*, name: str | None = None) -> Callable[[type[T]], type[T]]: ...


def interface(cls: type[T] | None = None, /, *, name: str | None = None) -> Any:
    """Make a class of ``async def`` methods a component *interface*: what a client imports.

    An interface is a class, a :class:`typing.Protocol` reads best, whose public
    methods are ``async def`` with full annotations and ``...`` for a body.
    ``client.stub(API)`` is typed as ``API``, so a type checker sees every
    remote call as awaitable with its real argument and result types. A
    component declares ``@component(implements=API)`` (or subclasses ``API``):
    it takes the interface's name, so both sides compute the same method keys,
    and a client process needs only the interface. Mark methods
    ``@not_retriable`` here: clients read the interface. The default name is
    ``"<module>.<qualname>"`` of the interface.
    """

    def decorate(cls: type[T]) -> type[T]:
        spec = _build_spec(cls, name or f"{cls.__module__}.{cls.__qualname__}")
        sync = [m for m, method in spec.methods.items() if not method.is_async]
        if sync:
            raise RegistrationError(
                f"interface {spec.name}: {', '.join(sync)} must be async def (a stub's calls are awaited;"
                " a component may still implement them with a plain def)"
            )
        setattr(cls, _SPEC_ATTR, spec)
        setattr(cls, _INTERFACE_ATTR, True)
        return cls

    return decorate(cls) if cls is not None else decorate


def _inherited_interface(cls: type) -> type | None:
    return next((base for base in cls.__mro__[1:] if _INTERFACE_ATTR in vars(base)), None)


def _implementation_spec(cls: type, api: type | None, name: str | None) -> ComponentSpec:
    """The spec of ``cls``, which implements interface ``api``, checked against it."""
    wanted = getattr(api, _SPEC_ATTR, None)
    if api is None or _INTERFACE_ATTR not in vars(api) or not isinstance(wanted, ComponentSpec):
        raise RegistrationError(f"{cls.__qualname__}: implements={api!r} is not a class marked @interface")
    where = f"{cls.__qualname__} (implements {api.__qualname__}, {wanted.name!r})"
    if name is not None and name != wanted.name:
        raise RegistrationError(f"{where}: a component takes its interface's name, not {name!r}")
    spec = _build_spec(cls, wanted.name)
    # A method inherited from the interface (a subclass that did not override it) is not implemented.
    missing = [m for m in wanted.methods if m not in spec.methods or _defined(cls, m) is _defined(api, m)]
    if missing:
        raise RegistrationError(f"{where}: does not implement {', '.join(missing)}")
    extra = sorted(spec.methods.keys() - wanted.methods.keys())
    if extra:
        raise RegistrationError(
            f"{where}: public methods not in the interface: {', '.join(extra)}"
            " (add them to the interface, or make them private with a leading underscore)"
        )
    methods = dict(spec.methods)
    for m, method in spec.methods.items():
        problem = _mismatch(_defined(api, m), _defined(cls, m))
        if problem:
            raise RegistrationError(f"{where}: {m}() does not match the interface: {problem}")
        if not method.retriable and wanted.methods[m].retriable:
            raise RegistrationError(
                f"{where}: {m}() is @not_retriable here but not in the interface: mark the interface's method"
                " (clients read the interface)"
            )
        if not wanted.methods[m].retriable:
            methods[m] = dataclasses.replace(method, retriable=False)
    return ComponentSpec(spec.name, cls, methods)


def _defined(cls: type, name: str) -> Any:
    return inspect.getattr_static(cls, name)


def _mismatch(wanted: Callable[..., Any], got: Callable[..., Any]) -> str | None:
    """How ``got``'s parameters, defaults or types differ from ``wanted``'s, or None."""
    ours = list(inspect.signature(got).parameters.values())[1:]
    theirs = list(inspect.signature(wanted).parameters.values())[1:]
    if [p.name for p in ours] != [p.name for p in theirs]:
        names = ", ".join(p.name for p in ours)
        return f"parameters ({names}) here, ({', '.join(p.name for p in theirs)}) in the interface"
    our_hints, their_hints = typing.get_type_hints(got), typing.get_type_hints(wanted)
    for p, q in zip(ours, theirs, strict=True):
        if p.kind is not q.kind:
            return f"parameter {p.name!r} is {p.kind.description} here, {q.kind.description} in the interface"
        if (p.default is p.empty) != (q.default is q.empty) or not _same(p.default, q.default):
            return f"parameter {p.name!r} defaults to {_default(p)} here, {_default(q)} in the interface"
        mine, yours = our_hints.get(p.name, Any), their_hints.get(p.name, Any)
        if not _same(mine, yours):
            return f"parameter {p.name!r} is {_type(mine)} here, {_type(yours)} in the interface"
    mine, yours = our_hints.get("return", Any), their_hints.get("return", Any)
    if not _same(mine, yours):
        return f"returns {_type(mine)} here, {_type(yours)} in the interface"
    return None


def _same(a: object, b: object) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


def _default(p: inspect.Parameter) -> str:
    return "nothing" if p.default is p.empty else repr(p.default)


def _type(annotation: object) -> str:
    return inspect.formatannotation(annotation)


def _build_spec(cls: type, name: str) -> ComponentSpec:
    if not name or any(c.isspace() for c in name):
        raise RegistrationError(f"invalid component name {name!r}")
    methods: dict[str, MethodSpec] = {}
    for attr in sorted(dir(cls)):
        if attr.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, attr)
        if not inspect.isfunction(raw):
            continue  # properties, static and class methods, attributes are not RPC methods
        methods[attr] = _method_spec(name, attr, raw)
    return ComponentSpec(name, cls, methods)


def _method_spec(component_name: str, name: str, fn: Callable[..., Any]) -> MethodSpec:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]  # drop self
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise RegistrationError(f"{component_name}.{name}: *args/**kwargs are not supported in RPC methods")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise RegistrationError(f"{component_name}.{name}: cannot resolve type hints: {exc}") from exc
    arg_types = tuple(hints.get(p.name, Any) for p in params)
    result_type = hints.get("return", Any)
    if result_type is type(None):
        result_type = None
    args_type: Any = tuple[arg_types] if arg_types else tuple[()]  # type: ignore[valid-type]
    try:
        args_decoder = msgspec.msgpack.Decoder(args_type)
        result_decoder = msgspec.msgpack.Decoder(result_type)
    except TypeError as exc:
        raise RegistrationError(f"{component_name}.{name}: unsupported type in signature: {exc}") from exc
    encoder = msgspec.msgpack.Encoder()
    public_sig = sig.replace(parameters=params)
    return MethodSpec(
        component=component_name,
        name=name,
        key=make_method_key(component_name, name),
        signature=public_sig,
        params=tuple(p.name for p in params),
        positional=sum(p.kind is not p.KEYWORD_ONLY for p in params),
        is_async=inspect.iscoroutinefunction(fn),
        retriable=not getattr(fn, _NOT_RETRIABLE_ATTR, False),
        inline=bool(getattr(fn, _INLINE_ATTR, False)),
        encode_args=encoder.encode,
        decode_args=args_decoder.decode,
        encode_result=encoder.encode,
        decode_result=result_decoder.decode,
    )
