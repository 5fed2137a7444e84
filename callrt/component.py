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

import collections.abc
import dataclasses
import inspect
import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

import anyio
import msgspec
import msgspec.inspect

from .context import stream_var
from .errors import Internal, InvalidArgument, RegistrationError, RemoteError, UnknownMethod
from .keys import MethodKey, make_method_key

__all__ = (
    "AwaitableMethod",
    "ComponentSpec",
    "DeclaredError",
    "MethodSpec",
    "StreamSpec",
    "caller_error",
    "component",
    "component_spec",
    "declared_error_args",
    "inline",
    "is_declared_error",
    "interface",
    "not_retriable",
)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
ErrorDeclaration = Sequence[type[Exception]] | Mapping[str, type[Exception]]
"""``@component(errors=...)``: exception classes, or a mapping of wire names to them."""

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
        raise RegistrationError(
            f"{method.__qualname__}: @inline is for plain def methods; async ones run on the loop already"
        )
    setattr(method, _INLINE_ATTR, True)
    return method


@dataclass(frozen=True, slots=True)
class AwaitableMethod:
    """An async method of a component instance, in the parts its handler is made of.

    A server that awaits ``method`` itself, instead of the handler's coroutine around
    it, lets an async method that does not suspend cost little more than a sync one.
    The steps are the handler's: ``decode(payload)``, or when that raises a msgspec
    error ``decode_again(payload, exc)`` (fewer arguments, or the InvalidArgument);
    ``await method(*args)``; ``encode(result)``, whose TypeError, ValueError or
    OverflowError ``result_error`` turns into the call's error.
    """

    decode: Callable[[bytes], tuple[Any, ...]]
    decode_again: Callable[[bytes, msgspec.ValidationError | msgspec.DecodeError], tuple[Any, ...]]
    method: Callable[..., Awaitable[Any]]
    encode: Callable[[Any], bytes]
    result_error: Callable[[Exception], Exception]

    async def run(self, payload: bytes) -> bytes:
        """The method's handler: its steps, in order."""
        try:
            args = self.decode(payload)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            args = self.decode_again(payload, exc)  # fewer arguments (defaults), or the InvalidArgument
        result = await self.method(*args)
        try:
            return self.encode(result)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self.result_error(exc) from None


@dataclass(frozen=True, slots=True)
class DeclaredError:
    """An exception class a component declared (``@component(errors=...)``): callers get it back by type.

    ``name`` is what travels as the error's ``remote_type``; ``decode`` turns the
    MessagePack array of its ``args`` back into a tuple, typed by the class's
    ``__init__`` annotations when it has them.
    """

    name: str
    cls: type[Exception]
    decode: Callable[[bytes], tuple[Any, ...]]


# Every class declared by some component, by class: a server sends the args of these (only).
_DECLARED: dict[type, str] = {}
_ARGS_ENCODER = msgspec.msgpack.Encoder()


def is_declared_error(exc: BaseException) -> bool:
    """Whether some component declared ``exc``'s class (exactly): an outcome its methods raise on purpose."""
    return type(exc) in _DECLARED


def declared_error_args(exc: BaseException) -> tuple[str, bytes] | None:
    """The wire name and encoded ``args`` of ``exc`` if its class (exactly) was declared, else None.

    Args that cannot be encoded give None: the caller then gets a plain RemoteError.
    """
    name = _DECLARED.get(type(exc))
    if name is None:
        return None
    try:
        return name, _ARGS_ENCODER.encode(exc.args)
    except (TypeError, ValueError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """How a stream method's items travel (protocol version 3): its shape and the items' codecs.

    A method *yields* items (an async generator, a plain generator, or an ``async def``
    declared to return ``AsyncIterator[T]``: a server stream) and/or *takes* the caller's
    items (one positional parameter typed ``AsyncIterator[T]``: a client stream); both is
    a bidirectional stream. The parameter that takes items is not in the arguments array:
    its items travel as ITEM frames.
    """

    yields: bool
    takes: int | None  # the index (self not counted) of the parameter that receives the caller's items
    signature: inspect.Signature  # the whole signature, the items parameter included
    encode_item: Callable[[Any], bytes]  # the items the method yields
    decode_item: Callable[[bytes], Any]
    encode_input: Callable[[Any], bytes]  # the items the caller sends
    decode_input: Callable[[bytes], Any]
    sync: bool = False  # a plain generator: each step runs in a worker thread

    @property
    def shape(self) -> str:
        """``"server"``, ``"client"`` or ``"bidirectional"``: which side sends items."""
        if self.takes is None:
            return "server"
        return "bidirectional" if self.yields else "client"


_NIL = b"\xc0"  # MessagePack nil: the result that ends a stream of items
_DONE = object()
_ASYNC_ITERATORS = (collections.abc.AsyncIterator, collections.abc.AsyncIterable, collections.abc.AsyncGenerator)
_ITERATORS = (collections.abc.Iterator, collections.abc.Iterable, collections.abc.Generator)


def _item_type(annotation: object, origins: tuple[type, ...]) -> object | None:
    """``T`` of ``annotation`` when it is one of ``origins`` (``AsyncIterator[T]``, say); ``Any`` unparametrized."""
    if annotation in origins:
        return Any
    if typing.get_origin(annotation) in origins:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


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
    # Compatibility between versions (docs/compatibility.md): a call may leave out trailing
    # parameters that have defaults; the receiving side fills in its own defaults.
    required: int = -1  # how many leading parameters every call sends (-1: all of them)
    defaults: tuple[Any, ...] = ()  # the defaults of params[required:]
    # Decoders of the shorter argument arrays: short_decoders[i] takes required + i arguments.
    short_decoders: tuple[Callable[[bytes], tuple[Any, ...]], ...] = ()
    # The same by the array's header byte (fixarrays, up to 15 arguments), with the defaults
    # that complete each: the usual short call costs one dict lookup and a second decode.
    short_by_header: Mapping[int, tuple[Callable[[bytes], tuple[Any, ...]], tuple[Any, ...]]] = field(
        default_factory=dict
    )
    # The exceptions the component declared (@component(errors=...)), by their wire name.
    errors: Mapping[str, DeclaredError] = field(default_factory=dict)
    stream: StreamSpec | None = None  # a stream method: how its items travel; None for a unary one

    @property
    def full_name(self) -> str:
        return f"{self.component}.{self.name}"

    def args_from_payload(self, payload: bytes) -> tuple[Any, ...]:
        """Decode and type-check arguments; a mismatch is an InvalidArgument naming the parameter."""
        try:
            return self.decode_args(payload)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return self.decode_other_length(payload, exc)

    def decode_other_length(
        self, payload: bytes, exc: msgspec.ValidationError | msgspec.DecodeError
    ) -> tuple[Any, ...]:
        """The arguments of a call whose array did not decode as this method's full parameter list.

        Off the common path: it runs only after the full-length decoder failed. A call that
        left out trailing parameters with defaults (an older caller, or one that did not pass
        them) gets this side's defaults; anything else raises the :class:`InvalidArgument` that
        names the method and the parameter.
        """
        short = self.short_by_header.get(payload[0]) if payload else None
        if short is not None:
            decode_short, defaults = short
            try:
                return decode_short(payload) + defaults
            except (msgspec.ValidationError, msgspec.DecodeError) as again:
                raise self._argument_error(again) from None
        sent, total = _array_length(payload), len(self.params)
        if sent is None or sent == total:
            raise self._argument_error(exc) from None
        if sent > total:
            more = sent - total
            raise InvalidArgument(
                f"{self.full_name}: the call sent {sent} arguments, but this server's version of the method "
                f"takes {total} ({', '.join(self.params) or 'none'}): the caller's version has {more} more "
                f"parameter{'s' if more > 1 else ''}, which this server does not know"
            ) from None
        required = total if self.required < 0 else self.required
        if sent < required:
            missing = self.params[sent:required]
            raise InvalidArgument(
                f"{self.full_name}: missing argument{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))}: the call sent {sent} of {total}, and "
                f"{'these parameters have' if len(missing) > 1 else 'this parameter has'} no default here"
            ) from None
        try:
            head = self.short_decoders[sent - required](payload)
        except (msgspec.ValidationError, msgspec.DecodeError) as again:
            raise self._argument_error(again) from None
        return head + self.defaults[sent - required :]

    def _argument_error(self, exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidArgument:
        if isinstance(exc, msgspec.ValidationError):
            return InvalidArgument(self._describe(str(exc)))
        return InvalidArgument(f"{self.full_name}: malformed arguments: {exc}")

    def _result_error(self, exc: Exception) -> Internal:
        return Internal(f"{self.full_name}: result cannot be encoded: {exc}")

    def payload_from_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """Bind a call's arguments to the signature and encode them."""
        if kwargs or not 0 <= self.required <= len(args) <= min(self.positional, len(self.params)):
            # Trailing parameters the caller left out are not sent: the server fills in its own
            # defaults, so a server that gained parameters with defaults serves older callers,
            # and a server without a newer parameter serves callers that do not pass it.
            try:
                bound = self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.full_name}(): {exc}") from None
            given = [i for i, p in enumerate(self.params) if p in bound.arguments]
            bound.apply_defaults()
            send = max(self.required if self.required >= 0 else len(self.params), given[-1] + 1 if given else 0)
            args = tuple(bound.arguments[p] for p in self.params[:send])
        try:
            return self.encode_args(args)
        except (TypeError, ValueError, OverflowError) as exc:
            bad = next((p for p, a in zip(self.params[: len(args)], args, strict=True) if not _encodable(a)), None)
            where = f" argument {bad!r}" if bad else ""
            raise InvalidArgument(f"{self.full_name}:{where} cannot be encoded: {exc}") from None

    def _describe(self, message: str) -> str:
        match = _PATH.search(message)
        if match and int(match.group(1)) < len(self.params):
            param = self.params[int(match.group(1))]
            message = message.replace(match.group(0), f"`{param}", 1)
            return f"{self.full_name}: invalid argument {param!r}: {message}"
        return f"{self.full_name}: invalid arguments: {message}"

    def _bound(self, instance: object) -> Callable[..., Any]:
        """This method of ``instance``, taking its arguments in parameter order."""
        method: Callable[..., Any] = getattr(instance, self.name)
        keyword_only = self.params[self.positional :]
        if not keyword_only:
            return method
        # Arguments travel in parameter order; keyword-only ones are passed back by name.
        positional, plain = self.positional, method

        def by_name(*args: Any) -> Any:
            return plain(*args[:positional], **dict(zip(keyword_only, args[positional:], strict=True)))

        return by_name

    def awaitable(self, instance: object) -> AwaitableMethod:
        """This async method of ``instance`` in parts, for a server that awaits the method itself."""
        return AwaitableMethod(
            self.decode_args, self.decode_other_length, self._bound(instance), self.encode_result, self._result_error
        )

    def handler(self, instance: object) -> Callable[[bytes], bytes] | Callable[[bytes], Awaitable[bytes]]:
        """A bytes-in, bytes-out handler calling this method on ``instance``."""
        if self.stream is not None:
            return self._stream_handler(self._bound(instance))
        # Each handler is one Python frame around the method: it runs once per call.
        if self.is_async:
            return self.awaitable(instance).run
        method = self._bound(instance)
        decode, encode = self.decode_args, self.encode_result
        decode_again, result_error = self.decode_other_length, self._result_error

        def sync_handler(payload: bytes) -> bytes:
            try:
                args = decode(payload)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                args = decode_again(payload, exc)  # fewer arguments (defaults), or the InvalidArgument
            result = method(*args)
            try:
                return encode(result)
            except (TypeError, ValueError, OverflowError) as exc:
                raise result_error(exc) from None

        return sync_handler

    def _stream_handler(self, method: Callable[..., Any]) -> Callable[[bytes], Awaitable[bytes]]:
        """The handler of a stream method: items through the connection's :class:`~callrt.context.StreamChannel`."""
        stream = self.stream
        assert stream is not None
        decode, decode_again, full_name = self.decode_args, self.decode_other_length, self.full_name
        encode_item, decode_input, takes = stream.encode_item, stream.decode_input, stream.takes
        encode_result, result_error = self.encode_result, self._result_error
        items_param = "" if takes is None else list(stream.signature.parameters)[takes]

        async def caller_items(channel: Any) -> AsyncIterator[Any]:
            async for data in channel.items():
                try:
                    yield decode_input(data)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    raise InvalidArgument(f"{full_name}: an item of {items_param!r} is invalid: {exc}") from None

        def encoded(item: object) -> bytes:
            try:
                return encode_item(item)
            except (TypeError, ValueError, OverflowError) as exc:
                raise Internal(f"{full_name}: an item cannot be encoded: {exc}") from None

        async def stream_handler(payload: bytes) -> bytes:
            channel = stream_var.get()
            if channel is None:
                raise Internal(f"{full_name} is a stream method, called without a stream")
            try:
                args = decode(payload)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                args = decode_again(payload, exc)
            if takes is not None:
                args = (*args[:takes], caller_items(channel), *args[takes:])
            if stream.sync:  # a plain generator: each step in a worker thread, never on the loop
                gen = method(*args)
                try:
                    while (item := await channel.run_sync(next, gen, _DONE)) is not _DONE:
                        await channel.send(encoded(item))
                finally:
                    with anyio.CancelScope(shield=True):
                        await channel.run_sync(gen.close)
                return _NIL
            result = method(*args)
            if not stream.yields:  # a client stream: one result, as a unary method's
                value = await result
                try:
                    return encode_result(value)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise result_error(exc) from None
            if inspect.iscoroutine(result):  # an async def that returns an async iterator
                result = await result
            try:
                async for item in result:
                    data = encoded(item)
                    if not channel.try_send(data):  # no credit left (or a large item): wait for it
                        await channel.send(data)
            finally:
                aclose = getattr(result, "aclose", None)
                if aclose is not None:  # the generator's finally runs now, cancelled or not
                    await aclose()
            return _NIL

        stream_handler.__qualname__ = f"{full_name} (stream)"
        return stream_handler


def _encodable(value: object) -> bool:
    try:
        msgspec.msgpack.encode(value)
    except Exception:
        return False
    return True


def _array_length(payload: bytes) -> int | None:
    """The length of the MessagePack array ``payload`` starts with, or None if it does not start with one."""
    if not payload:
        return None
    first = payload[0]
    if 0x90 <= first <= 0x9F:  # fixarray
        return first & 0x0F
    if first == 0xDC and len(payload) >= 3:  # array 16
        return int.from_bytes(payload[1:3], "big")
    if first == 0xDD and len(payload) >= 5:  # array 32
        return int.from_bytes(payload[1:5], "big")
    return None


_TAKES = re.compile(r"takes (\d+) \(")


def caller_error(method: MethodSpec, remote: RemoteError) -> BaseException:
    """What the caller of ``method`` gets for ``remote``, the error the server answered with.

    Only this side knows which method it called: an :class:`UnknownMethod` for this
    call's key, and an :class:`InvalidArgument` for arguments this server does not
    know, are given messages naming them. A declared exception (``@component(errors=...)``)
    whose arguments came with it is rebuilt as its class: the exception to raise
    ``from remote``, so the remote details stay reachable as its ``__cause__``. Nothing
    else is ever instantiated: the name on the wire only selects among declared classes.
    """
    kind = type(remote)
    if kind is UnknownMethod and method.key.hex() in remote.message:
        return UnknownMethod(
            f"{method.full_name}: the server does not serve this method ({remote.message})",
            code=remote.code,
            remote_type=remote.remote_type,
        )
    if kind is InvalidArgument and remote.message.startswith(f"{method.full_name}: the call sent "):
        takes = _TAKES.search(remote.message)
        unknown = method.params[int(takes.group(1)) :] if takes else ()
        if unknown:
            names = ", ".join(map(repr, unknown))
            return InvalidArgument(f"{remote.message}: {names}", code=remote.code, remote_type=remote.remote_type)
        return remote
    declared = method.errors.get(remote.remote_type) if method.errors else None
    if declared is None or remote.remote_args is None:
        return remote
    try:
        exc = declared.cls(*declared.decode(remote.remote_args))
    except Exception:
        return remote  # args this side's class does not take: the plain RemoteError
    if isinstance(exc, RemoteError):
        exc.code, exc.remote_type, exc.remote_traceback = remote.code, remote.remote_type, remote.remote_traceback
    return exc


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    """A component's name and its methods, by method name, and the exceptions it declared, by wire name."""

    name: str
    cls: type
    methods: dict[str, MethodSpec]
    errors: Mapping[str, DeclaredError] = field(default_factory=dict)


@overload
def component(cls: type[T], /) -> type[T]: ...
@overload
def component(
    *, name: str | None = None, implements: type | None = None, errors: ErrorDeclaration = ()
) -> Callable[[type[T]], type[T]]: ...


def component(
    cls: type[T] | None = None,
    /,
    *,
    name: str | None = None,
    implements: type | None = None,
    errors: ErrorDeclaration = (),
) -> Any:
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

    ``errors=(OutOfStock, ...)`` declares exception classes the methods raise:
    a caller whose stub was made from this class (or from its interface, which
    declares them the same way) gets an instance of the same class with the
    same ``args``, rebuilt as ``cls(*args)``, with the remote details as its
    ``__cause__``. Their ``args`` travel as MessagePack, so ``__init__``'s
    annotations must be types msgspec supports. Each travels under
    ``"<module>.<qualname>"``, or under the key it has when ``errors`` is a
    mapping ``{"shop.OutOfStock": OutOfStock}``.
    """

    def decorate(cls: type[T]) -> type[T]:
        declared = implements if implements is not None else _inherited_interface(cls)
        own = _declare_errors(cls.__qualname__, errors)
        spec = _build_spec(cls, name or f"{cls.__module__}.{cls.__qualname__}", own) if declared is None else None
        setattr(cls, _SPEC_ATTR, spec or _implementation_spec(cls, declared, name, own))
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
        raise RegistrationError(
            f"{owner.__qualname__} is interface {spec.name!r}: serve a @component that implements it"
        )
    return spec


@overload
def interface(cls: type[T], /) -> type[T]: ...
@overload
def interface(*, name: str | None = None, errors: ErrorDeclaration = ()) -> Callable[[type[T]], type[T]]: ...


def interface(cls: type[T] | None = None, /, *, name: str | None = None, errors: ErrorDeclaration = ()) -> Any:
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
        own = _declare_errors(cls.__qualname__, errors)
        spec = _build_spec(cls, name or f"{cls.__module__}.{cls.__qualname__}", own)
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


def _implementation_spec(
    cls: type, api: type | None, name: str | None, errors: Mapping[str, DeclaredError] | None = None
) -> ComponentSpec:
    """The spec of ``cls``, which implements interface ``api``, checked against it."""
    wanted = getattr(api, _SPEC_ATTR, None)
    if api is None or _INTERFACE_ATTR not in vars(api) or not isinstance(wanted, ComponentSpec):
        raise RegistrationError(f"{cls.__qualname__}: implements={api!r} is not a class marked @interface")
    where = f"{cls.__qualname__} (implements {api.__qualname__}, {wanted.name!r})"
    if name is not None and name != wanted.name:
        raise RegistrationError(f"{where}: a component takes its interface's name, not {name!r}")
    spec = _build_spec(cls, wanted.name, {**wanted.errors, **(errors or {})})
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
    return ComponentSpec(spec.name, cls, methods, spec.errors)


def _defined(cls: type, name: str) -> Any:
    return inspect.getattr_static(cls, name)


def _mismatch(wanted: Callable[..., Any], got: Callable[..., Any]) -> str | None:
    """How ``got``'s parameters, defaults or types differ from ``wanted``'s, or None."""
    ours = list(inspect.signature(got).parameters.values())[1:]
    theirs = list(inspect.signature(wanted).parameters.values())[1:]
    if [p.name for p in ours] != [p.name for p in theirs]:
        names = ", ".join(p.name for p in ours)
        return f"parameters ({names}) here, ({', '.join(p.name for p in theirs)}) in the interface"
    our_hints = typing.get_type_hints(got, include_extras=True)  # constraints (msgspec.Meta) must match too
    their_hints = typing.get_type_hints(wanted, include_extras=True)
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


def _build_spec(cls: type, name: str, errors: Mapping[str, DeclaredError] | None = None) -> ComponentSpec:
    if not name or any(c.isspace() for c in name):
        raise RegistrationError(f"invalid component name {name!r}")
    methods: dict[str, MethodSpec] = {}
    errors = dict(errors or {})
    for attr in sorted(dir(cls)):
        if attr.startswith("_"):
            continue  # not an RPC method, whatever it is
        raw = inspect.getattr_static(cls, attr)
        if not inspect.isfunction(raw):
            continue  # properties, static and class methods, attributes are not RPC methods
        methods[attr] = _method_spec(name, attr, raw, errors=errors, owner=cls.__qualname__)
    return ComponentSpec(name, cls, methods, errors)


def _method_spec(
    component_name: str,
    name: str,
    fn: Callable[..., Any],
    *,
    errors: Mapping[str, DeclaredError] | None = None,
    owner: str | None = None,
) -> MethodSpec:
    """The spec of method ``name``; a shape callrt cannot serve is a RegistrationError naming ``Class.method``."""
    label = f"{owner or component_name}.{name}"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise RegistrationError(f"{label}: has no signature callrt can read: {exc}") from exc
    everything = list(sig.parameters.values())
    if not everything or everything[0].kind not in (everything[0].POSITIONAL_ONLY, everything[0].POSITIONAL_OR_KEYWORD):
        raise RegistrationError(f"{label}: an RPC method takes self as its first parameter")
    params = everything[1:]  # drop self
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            raise RegistrationError(
                f"{label}: *{p.name} is not supported: arguments travel as a fixed list of typed parameters"
                " (take a list instead)"
            )
        if p.kind is p.VAR_KEYWORD:
            raise RegistrationError(
                f"{label}: **{p.name} is not supported: arguments travel as a fixed list of typed parameters"
                " (take a dict or a Struct instead)"
            )
    try:
        # include_extras: Annotated[int, msgspec.Meta(ge=0)] keeps its constraints, checked on decoding.
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise RegistrationError(f"{label}: cannot resolve type hints: {exc}") from exc
    result_type = hints.get("return", Any)
    stream_types = _stream_types(label, fn, params, hints)
    takes, yielded, taken = stream_types or (None, None, None)
    full_sig = sig.replace(parameters=params)
    if stream_types is not None:
        if takes is not None:
            params = params[:takes] + params[takes + 1 :]  # its items travel as frames, not as an argument
        if yielded is not None:
            result_type = None  # what ends a stream of items
    arg_types = tuple(hints.get(p.name, Any) for p in params)
    if result_type is type(None):
        result_type = None
    annotated = [(f"parameter {p.name!r}", t) for p, t in zip(params, arg_types, strict=True)]
    if yielded is not None:
        annotated.append(("the stream's items", yielded))
    if taken is not None:
        annotated.append(("the caller's items", taken))
    for what, annotation in [*annotated, ("the result", result_type)]:
        try:
            msgspec.msgpack.Decoder(annotation)
            custom = _custom_type(annotation)
        except TypeError as exc:
            problem = str(exc)
        else:
            if custom is None:
                continue
            problem = f"{custom.__qualname__} is not a type msgspec encodes (a Struct or a dataclass would be)"
        raise RegistrationError(
            f"{label}: unsupported type in signature: {what} is {inspect.formatannotation(annotation)}: {problem}"
        )
    args_type: Any = tuple[arg_types] if arg_types else tuple[()]  # type: ignore[valid-type]
    try:
        args_decoder = msgspec.msgpack.Decoder(args_type)
        result_decoder = msgspec.msgpack.Decoder(result_type)
    except TypeError as exc:
        raise RegistrationError(f"{label}: unsupported type in signature: {exc}") from exc
    # A call may leave out the trailing parameters that have defaults (docs/compatibility.md).
    required = len(params)
    while required and params[required - 1].default is not inspect.Parameter.empty:
        required -= 1
    encoder = msgspec.msgpack.Encoder()
    public_sig = sig.replace(parameters=params)
    defaults = tuple(p.default for p in params[required:])
    short_decoders = tuple(_tuple_decoder(arg_types[:n]) for n in range(required, len(params)))
    stream = None
    if stream_types is not None:
        try:
            item_decoder = msgspec.msgpack.Decoder(yielded if yielded is not None else Any)
            input_decoder = msgspec.msgpack.Decoder(taken if taken is not None else Any)
        except TypeError as exc:
            raise RegistrationError(f"{label}: unsupported item type: {exc}") from exc
        stream = StreamSpec(
            yields=yielded is not None,
            takes=takes,
            signature=full_sig,
            encode_item=encoder.encode,
            decode_item=item_decoder.decode,
            encode_input=encoder.encode,
            decode_input=input_decoder.decode,
            sync=inspect.isgeneratorfunction(fn),
        )
    return MethodSpec(
        component=component_name,
        name=name,
        key=make_method_key(component_name, name),
        signature=public_sig,
        params=tuple(p.name for p in params),
        positional=sum(p.kind is not p.KEYWORD_ONLY for p in params),
        is_async=stream is not None or inspect.iscoroutinefunction(fn),
        retriable=not getattr(fn, _NOT_RETRIABLE_ATTR, False),
        inline=stream is None and bool(getattr(fn, _INLINE_ATTR, False)),
        encode_args=encoder.encode,
        decode_args=args_decoder.decode,
        encode_result=encoder.encode,
        decode_result=result_decoder.decode,
        required=required,
        defaults=defaults,
        short_decoders=short_decoders,
        short_by_header={
            0x90 + n: (short_decoders[n - required], defaults[n - required :])
            for n in range(required, min(len(params), 16))
        },
        errors=errors if errors is not None else {},
        stream=stream,
    )


def _stream_types(
    label: str, fn: Callable[..., Any], params: list[inspect.Parameter], hints: Mapping[str, Any]
) -> tuple[int | None, Any, Any] | None:
    """For a stream method: the index of the parameter taking the caller's items, and both item types.

    ``None`` for a unary method. A shape callrt cannot serve is a RegistrationError naming ``label``.
    """
    returned = hints.get("return")
    yielded: Any = None
    if not inspect.isgeneratorfunction(fn):
        # An async generator; or a def or async def declared to return an async iterator (an interface's).
        yielded = _item_type(returned, _ASYNC_ITERATORS)
        if inspect.isasyncgenfunction(fn) and yielded is None:
            if returned is not None:
                raise RegistrationError(
                    f"{label}: an async generator is a stream method: annotate it -> AsyncIterator[T], "
                    f"not {inspect.formatannotation(returned)}"
                )
            yielded = Any
    else:
        yielded = _item_type(returned, _ITERATORS)
        if yielded is None:
            if returned is not None:
                raise RegistrationError(
                    f"{label}: a generator is a stream method: annotate it -> Iterator[T], "
                    f"not {inspect.formatannotation(returned)}"
                )
            yielded = Any
    taking = [
        (i, t) for i, p in enumerate(params) if (t := _item_type(hints.get(p.name), _ASYNC_ITERATORS)) is not None
    ]
    if len(taking) > 1:
        raise RegistrationError(f"{label}: a stream method takes the caller's items in one parameter, not several")
    takes, taken = taking[0] if taking else (None, None)
    if takes is None and yielded is None:
        return None
    if takes is not None:
        p = params[takes]
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty:
            raise RegistrationError(
                f"{label}: parameter {p.name!r} takes the caller's items: it must be positional, without a default"
            )
        if not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn) or yielded is not None):
            raise RegistrationError(f"{label}: a method that takes the caller's items must be async def")
    return takes, yielded, taken


def _custom_type(annotation: Any) -> type | None:
    """A class in ``annotation`` that msgspec would only handle with encode/decode hooks (callrt has none)."""
    seen: set[int] = set()
    todo: list[Any] = [msgspec.inspect.type_info(annotation)]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue  # a recursive Struct refers back to itself
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType) and node.cls is not object:
            return node.cls  # (msgspec decodes ``object`` as any value)
        if isinstance(node, msgspec.inspect.Field):
            todo.append(node.type)
        elif isinstance(node, msgspec.inspect.Type):
            for name in node.__struct_fields__:
                value = getattr(node, name)
                todo.extend(value if isinstance(value, tuple) else [value])
    return None


def _tuple_decoder(types: Sequence[Any]) -> Callable[[bytes], tuple[Any, ...]]:
    decoder: msgspec.msgpack.Decoder[tuple[Any, ...]] = msgspec.msgpack.Decoder(
        tuple[tuple(types)] if types else tuple[()]  # type: ignore[misc]
    )
    return decoder.decode


_ANY_ARGS: msgspec.msgpack.Decoder[tuple[Any, ...]] = msgspec.msgpack.Decoder(tuple[Any, ...])


def _declare_errors(owner: str, errors: ErrorDeclaration) -> dict[str, DeclaredError]:
    """Check ``@component(errors=...)`` and register its classes; their wire names map to them."""
    pairs = list(errors.items()) if isinstance(errors, Mapping) else [(None, cls) for cls in errors]
    out: dict[str, DeclaredError] = {}
    for given, cls in pairs:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise RegistrationError(f"{owner}: errors= takes Exception subclasses, not {cls!r}")
        if cls.__module__ == "callrt" or cls.__module__.startswith("callrt."):
            raise RegistrationError(f"{owner}: {cls.__qualname__} is callrt's own: it reaches callers by its code")
        wire = given if given is not None else _wire_name(cls)
        if not isinstance(wire, str) or not wire or any(c.isspace() for c in wire):
            raise RegistrationError(f"{owner}: invalid error name {wire!r} for {cls.__qualname__}")
        if wire in out and out[wire].cls is not cls:
            raise RegistrationError(f"{owner}: {out[wire].cls.__qualname__} and {cls.__qualname__} are both {wire!r}")
        known = _DECLARED.get(cls)
        if known is not None and known != wire:
            raise RegistrationError(f"{owner}: {cls.__qualname__} is already declared as {known!r}, not {wire!r}")
        out[wire] = DeclaredError(wire, cls, _error_args_decoder(owner, cls))
    _DECLARED.update((d.cls, d.name) for d in out.values())
    return out


def _wire_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _error_args_decoder(owner: str, cls: type[Exception]) -> Callable[[bytes], tuple[Any, ...]]:
    """Decode an exception's ``args``, typed by its ``__init__``'s positional parameters when it has its own."""
    init = cls.__init__
    if not inspect.isfunction(init):
        return _ANY_ARGS.decode  # BaseException's: any args
    where = f"{owner}: errors: {cls.__qualname__}.__init__"
    try:
        params = list(inspect.signature(init).parameters.values())[1:]
        hints = typing.get_type_hints(init)
    except Exception as exc:
        raise RegistrationError(f"{where}: cannot resolve type hints: {exc}") from exc
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return _ANY_ARGS.decode
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    types = [hints.get(p.name, Any) for p in positional]
    required = len(positional)
    while required and positional[required - 1].default is not inspect.Parameter.empty:
        required -= 1
    by_length: dict[int, Callable[[bytes], tuple[Any, ...]]] = {}
    for n in range(required, len(positional) + 1):
        try:
            by_length[n] = _tuple_decoder(types[:n])
            custom = next(filter(None, map(_custom_type, types[:n])), None)
        except TypeError as exc:
            custom, problem = None, str(exc)
        else:
            if custom is None:
                continue
            problem = f"{custom.__qualname__} is not a type msgspec encodes"
        raise RegistrationError(f"{where}: its arguments travel as MessagePack: {problem}")

    def decode(payload: bytes) -> tuple[Any, ...]:
        typed = by_length.get(_array_length(payload) or 0)
        return typed(payload) if typed is not None else _ANY_ARGS.decode(payload)

    return decode
