"""@component: method discovery, signatures, and typed argument/result codecs."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import uuid
from collections.abc import AsyncIterator
from typing import Any, Optional, Union

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callrt import component, not_retriable
from callrt.component import ComponentSpec, MethodSpec, caller_error, component_spec, declared_error_args
from callrt.errors import Internal, InvalidArgument, RegistrationError
from callrt.keys import make_method_key

# -- types used in signatures ----------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


class Item(msgspec.Struct):
    sku: str
    qty: int = 1
    tags: list[str] = []


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Unsupported:
    pass


# -- components ----------------------------------------------------------------


class Base:
    def inherited(self) -> str:
        return "base"


@component
class Shop(Base):
    """Exercises every kind of attribute discovery must skip, and a range of types."""

    tax_rate = 0.2

    def ping(self) -> None:
        return None

    def nothing(self):  # type: ignore[no-untyped-def]
        return None

    async def async_add(self, a: int, b: int) -> int:
        return a + b

    def add(self, a: int, b: int = 10) -> int:
        return a + b

    def greet(self, name: str, greeting: str = "hello", punct: str = "!") -> str:
        return f"{greeting} {name}{punct}"

    def echo_any(self, value):  # type: ignore[no-untyped-def]
        return value

    def builtins(self, i: int, f: float, s: str, b: bool, n: None) -> tuple[int, float, str, bool, None]:
        return (i, f, s, b, n)

    def blob(self, data: bytes) -> bytes:
        return data[::-1]

    def move(self, p: Point, dx: int) -> Point:
        return Point(p.x + dx, p.y)

    def restock(self, item: Item) -> Item:
        return Item(item.sku, item.qty + 1, [*item.tags, "restocked"])

    def paint(self, color: Color, level: Level) -> tuple[Color, Level]:
        return (color, level)

    def when(self, at: datetime.datetime, day: datetime.date, delta: datetime.timedelta) -> datetime.datetime:
        return at + delta

    def ident(self, u: uuid.UUID) -> uuid.UUID:
        return u

    def money(self, amount: decimal.Decimal) -> decimal.Decimal:
        return amount * 2

    def maybe(self, x: Optional[int]) -> Optional[str]:  # noqa: UP045
        return None if x is None else str(x)

    def either(self, x: Union[int, str]) -> Union[int, str]:  # noqa: UP007
        return x

    def either_new(self, x: int | str | None) -> int | str | None:
        return x

    def total(self, items: list[Item]) -> int:
        return sum(i.qty for i in items)

    def index(self, words: list[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, w in enumerate(words):
            out.setdefault(w, []).append(i)
        return out

    def invert(self, mapping: dict[str, int]) -> dict[int, str]:
        return {v: k for k, v in mapping.items()}

    def wrong_result(self) -> int:
        return "not an int"  # type: ignore[return-value]

    def unencodable_result(self) -> int:
        return object()  # type: ignore[return-value]

    @not_retriable
    def charge(self, amount: int) -> bool:
        return amount > 0

    @not_retriable
    async def async_charge(self, amount: int) -> bool:
        return amount > 0

    async def async_fail(self, x: int) -> int:
        raise ValueError(f"bad {x}")

    def _private(self) -> None:
        raise AssertionError

    def __dunder__(self) -> None:
        raise AssertionError

    @staticmethod
    def static() -> None:
        raise AssertionError

    @classmethod
    def klass(cls) -> None:
        raise AssertionError

    @property
    def prop(self) -> int:
        raise AssertionError


SHOP_METHODS = {
    "add",
    "async_add",
    "async_charge",
    "async_fail",
    "blob",
    "builtins",
    "charge",
    "either",
    "either_new",
    "echo_any",
    "greet",
    "ident",
    "index",
    "inherited",
    "invert",
    "maybe",
    "money",
    "move",
    "nothing",
    "paint",
    "ping",
    "restock",
    "total",
    "unencodable_result",
    "when",
    "wrong_result",
}


@component(name="custom.Named")
class Named:
    def hello(self) -> str:
        return "hi"


@pytest.fixture
def shop() -> Shop:
    return Shop()


def spec_of(name: str) -> MethodSpec:
    return component_spec(Shop).methods[name]


def call_sync(name: str, *args: Any, **kwargs: Any) -> Any:
    spec = spec_of(name)
    payload = spec.payload_from_args(args, kwargs)
    handler = spec.handler(Shop())
    result = handler(payload)
    assert isinstance(result, bytes)
    return spec.decode_result(result)


async def call_async(name: str, *args: Any, **kwargs: Any) -> Any:
    spec = spec_of(name)
    payload = spec.payload_from_args(args, kwargs)
    handler = spec.handler(Shop())
    result = await handler(payload)  # type: ignore[misc]
    assert isinstance(result, bytes)
    return spec.decode_result(result)


# -- naming and discovery ------------------------------------------------------


def test_default_name_is_module_and_qualname() -> None:
    spec = component_spec(Shop)
    assert isinstance(spec, ComponentSpec)
    assert spec.name == f"{__name__}.Shop"
    assert spec.name == "tests.test_component.Shop"
    assert spec.cls is Shop


def test_default_name_of_nested_class_uses_qualname() -> None:
    @component
    class Inner:
        def f(self) -> None:
            pass

    assert component_spec(Inner).name == f"{__name__}.test_default_name_of_nested_class_uses_qualname.<locals>.Inner"


def test_explicit_name() -> None:
    spec = component_spec(Named)
    assert spec.name == "custom.Named"
    method = spec.methods["hello"]
    assert method.component == "custom.Named"
    assert method.full_name == "custom.Named.hello"
    assert method.key == make_method_key("custom.Named", "hello")


@pytest.mark.parametrize("name", ["has space", "tab\there", " lead", "new\nline"])
def test_invalid_name(name: str) -> None:
    with pytest.raises(RegistrationError, match="invalid component name"):

        @component(name=name)
        class Bad:
            pass


def test_decorator_returns_the_class_unchanged() -> None:
    assert isinstance(Shop(), Shop)
    assert Shop().add(1, 2) == 3


def test_spec_of_instance_and_class() -> None:
    assert component_spec(Shop()) is component_spec(Shop)


@pytest.mark.parametrize("obj", [Base, Base(), int, 3])
def test_spec_of_non_component(obj: object) -> None:
    with pytest.raises(RegistrationError, match="not a @component"):
        component_spec(obj)  # type: ignore[arg-type]


def test_public_methods_discovered_and_others_skipped() -> None:
    methods = component_spec(Shop).methods
    assert set(methods) == SHOP_METHODS
    for skipped in ("_private", "__dunder__", "static", "klass", "prop", "tax_rate", "__init__"):
        assert skipped not in methods


def test_empty_component() -> None:
    @component(name="x.Empty")
    class Empty:
        pass

    assert component_spec(Empty).methods == {}


def test_method_spec_fields() -> None:
    spec = spec_of("greet")
    assert spec.name == "greet"
    assert spec.component == "tests.test_component.Shop"
    assert spec.key == make_method_key("tests.test_component.Shop", "greet")
    assert spec.params == ("name", "greeting", "punct")
    assert list(spec.signature.parameters) == ["name", "greeting", "punct"]  # no self
    assert spec.signature.parameters["greeting"].default == "hello"
    assert spec.is_async is False
    assert spec.retriable is True
    assert spec_of("ping").params == ()


def test_sync_and_async_detected() -> None:
    assert spec_of("add").is_async is False
    assert spec_of("async_add").is_async is True
    assert spec_of("async_charge").is_async is True


def test_not_retriable() -> None:
    assert spec_of("charge").retriable is False
    assert spec_of("async_charge").retriable is False
    assert spec_of("add").retriable is True
    assert spec_of("async_add").retriable is True


def test_not_retriable_returns_the_function() -> None:
    def f(self: object) -> None:
        pass

    assert not_retriable(f) is f


@pytest.mark.parametrize(
    "source",
    [
        "def m(self, *args: int) -> None: pass",
        "def m(self, **kwargs: int) -> None: pass",
        "def m(self, a: int, *rest: int) -> None: pass",
    ],
)
def test_variadic_parameters_rejected(source: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    cls = type("Variadic", (), {"m": namespace["m"], "__module__": __name__})
    with pytest.raises(RegistrationError, match="not supported"):
        component(cls)


def test_keyword_only_parameters_work() -> None:
    @component(name="x.KwOnly")
    class KwOnly:
        def m(self, a: int, *, b: int = 1, c: str = "c") -> str:
            return f"{a}{b}{c}"

    spec = component_spec(KwOnly).methods["m"]
    handler = spec.handler(KwOnly())
    assert spec.decode_result(handler(spec.payload_from_args((1,), {}))) == "11c"  # type: ignore[arg-type]
    assert spec.decode_result(handler(spec.payload_from_args((1,), {"c": "z", "b": 7}))) == "17z"  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        spec.payload_from_args((1, 2), {})


def test_positional_only_parameters_work() -> None:
    @component(name="x.PosOnly")
    class PosOnly:
        def m(self, a: int, /, b: int) -> int:
            return a - b

    spec = component_spec(PosOnly).methods["m"]
    assert spec.decode_result(spec.handler(PosOnly())(spec.payload_from_args((5,), {"b": 3}))) == 2  # type: ignore[arg-type]


def test_unsupported_type_in_signature() -> None:
    with pytest.raises(RegistrationError, match="unsupported type"):

        @component(name="x.BadType")
        class BadType:
            def m(self, a: int | Unsupported) -> None:
                pass


def test_unresolvable_type_hint() -> None:
    with pytest.raises(RegistrationError, match="cannot resolve type hints"):

        @component(name="x.BadHint")
        class BadHint:
            def m(self, a: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
                pass


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "expected"),
    [
        ("ping", (), {}, None),
        ("nothing", (), {}, None),
        ("add", (1, 2), {}, 3),
        ("add", (1,), {}, 11),  # default
        ("add", (), {"a": 1, "b": 5}, 6),  # all by keyword
        ("add", (1,), {"b": 5}, 6),  # mixed
        ("add", (), {"b": 5, "a": 1}, 6),  # keyword order does not matter
        ("greet", ("bob",), {"punct": "?"}, "hello bob?"),  # skip a default in the middle
        ("greet", ("bob", "hi"), {}, "hi bob!"),
        ("builtins", (-(2**63), 1.5, "ü", True, None), {}, (-(2**63), 1.5, "ü", True, None)),
        ("builtins", (2**64 - 1, float("inf"), "", False, None), {}, (2**64 - 1, float("inf"), "", False, None)),
        ("blob", (b"\x00\x01\xff",), {}, b"\xff\x01\x00"),
        ("blob", (b"",), {}, b""),
        ("move", (Point(1, 2), 3), {}, Point(4, 2)),
        ("move", (Point(1), 3), {}, Point(4, 0)),
        ("restock", (Item("a"),), {}, Item("a", 2, ["restocked"])),
        ("restock", (Item("a", 5, ["x"]),), {}, Item("a", 6, ["x", "restocked"])),
        ("paint", (Color.GREEN, Level.HIGH), {}, (Color.GREEN, Level.HIGH)),
        (
            "ident",
            (uuid.UUID("12345678-1234-5678-1234-567812345678"),),
            {},
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
        ),
        ("money", (decimal.Decimal("1.10"),), {}, decimal.Decimal("2.20")),
        ("maybe", (None,), {}, None),
        ("maybe", (7,), {}, "7"),
        ("either", (7,), {}, 7),
        ("either", ("x",), {}, "x"),
        ("either_new", (None,), {}, None),
        ("either_new", ("x",), {}, "x"),
        ("total", ([Item("a", 2), Item("b", 3)],), {}, 5),
        ("total", ([],), {}, 0),
        ("index", (["a", "b", "a"],), {}, {"a": [0, 2], "b": [1]}),
        ("invert", ({"a": 1, "b": 2},), {}, {1: "a", 2: "b"}),
        ("echo_any", ([1, "two", {"three": [3.0, None, b"4"]}],), {}, [1, "two", {"three": [3.0, None, b"4"]}]),
        ("inherited", (), {}, "base"),
        ("charge", (5,), {}, True),
    ],
)
def test_sync_round_trip(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], expected: Any) -> None:
    result = call_sync(method, *args, **kwargs)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "at",
    [
        datetime.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=datetime.UTC),
        datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
        datetime.datetime(2024, 1, 1, 12),  # naive
    ],
)
def test_datetime_round_trip(at: datetime.datetime) -> None:
    result = call_sync("when", at, datetime.date(2024, 1, 1), datetime.timedelta(seconds=90))
    assert result == at + datetime.timedelta(seconds=90)
    assert (result.tzinfo is None) == (at.tzinfo is None)


def test_arguments_travel_as_array_in_parameter_order() -> None:
    spec = spec_of("greet")
    assert msgspec.msgpack.decode(spec.payload_from_args(("bob",), {"punct": "?"})) == ["bob", "hello", "?"]
    assert spec.payload_from_args(("bob", "hello", "?"), {}) == spec.payload_from_args(
        (), {"name": "bob", "punct": "?"}
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.builds(
            Item, sku=st.text(max_size=8), qty=st.integers(-(2**63), 2**63 - 1), tags=st.lists(st.text(max_size=4))
        ),
        max_size=5,
    )
)
def test_struct_list_round_trip_property(items: list[Item]) -> None:
    spec = spec_of("total")
    assert spec.args_from_payload(spec.payload_from_args((items,), {})) == (items,)


@settings(max_examples=60, deadline=None)
@given(st.integers(-(2**63), 2**64 - 1), st.integers(-(2**63), 2**64 - 1))
def test_add_property(a: int, b: int) -> None:
    assert spec_of("add").args_from_payload(spec_of("add").payload_from_args((a,), {"b": b})) == (a, b)


@pytest.mark.anyio
async def test_async_round_trip() -> None:
    assert await call_async("async_add", 2, 3) == 5
    assert await call_async("async_add", b=3, a=2) == 5
    assert await call_async("async_charge", 0) is False


def test_async_handler_is_a_coroutine_function() -> None:
    handler = spec_of("async_add").handler(Shop())
    assert inspect.iscoroutinefunction(handler)
    assert not inspect.iscoroutinefunction(spec_of("add").handler(Shop()))


@pytest.mark.anyio
async def test_async_handler_errors_propagate() -> None:
    handler = spec_of("async_fail").handler(Shop())
    with pytest.raises(ValueError, match="bad 3"):
        await handler(spec_of("async_fail").payload_from_args((3,), {}))  # type: ignore[misc]


@pytest.mark.anyio
async def test_async_handler_invalid_argument() -> None:
    spec = spec_of("async_add")
    with pytest.raises(InvalidArgument, match="'b'"):
        await spec.handler(Shop())(msgspec.msgpack.encode((1, "two")))  # type: ignore[misc]


def test_handler_is_bound_to_its_instance() -> None:
    @component(name="x.Counter")
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def bump(self) -> int:
            self.n += 1
            return self.n

    a, b = Counter(), Counter()
    spec = component_spec(Counter).methods["bump"]
    ha, hb = spec.handler(a), spec.handler(b)
    payload = spec.payload_from_args((), {})
    ha(payload)
    ha(payload)
    hb(payload)
    assert (a.n, b.n) == (2, 1)


# -- argument errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "args", "param"),
    [
        ("add", ("one", 2), "a"),
        ("add", (1, "two"), "b"),
        ("add", (1, 2.5), "b"),
        ("greet", ("bob", "hi", 3), "punct"),
        ("blob", ("text",), "data"),
        ("move", ({"x": "1"}, 3), "p"),
        ("restock", ({"sku": 1},), "item"),
        ("paint", ("blue", 1), "color"),
        ("paint", ("red", 3), "level"),
        ("ident", ("not-a-uuid",), "u"),
        ("money", ("NaN-ish",), "amount"),
        ("maybe", ("7",), "x"),
        ("either", ([1],), "x"),
        ("total", ([{"sku": "a", "qty": "many"}],), "items"),
        ("index", (["a", 1],), "words"),
        ("invert", ({"a": "b"},), "mapping"),
    ],
)
def test_wrong_argument_type_names_the_parameter(method: str, args: tuple[Any, ...], param: str) -> None:
    spec = spec_of(method)
    payload = msgspec.msgpack.encode(args)  # what a client with other types would send
    with pytest.raises(InvalidArgument) as info:
        spec.handler(Shop())(payload)
    message = str(info.value)
    assert f"invalid argument {param!r}" in message
    assert spec.full_name in message
    assert "$[" not in message  # the msgspec path is rewritten to the parameter's name
    assert info.value.code.value == "invalid_argument"


def test_nested_error_path_is_rewritten() -> None:
    spec = spec_of("total")
    with pytest.raises(InvalidArgument, match=r"`items\[1\]\.qty`"):
        spec.args_from_payload(msgspec.msgpack.encode(([{"sku": "a"}, {"sku": "b", "qty": "x"}],)))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (msgspec.msgpack.encode(()), r"add: missing argument 'a': the call sent 0 of 2"),
        (
            msgspec.msgpack.encode((1, 2, 3)),
            r"add: the call sent 3 arguments, but this server's version of the method takes 2 \(a, b\)",
        ),
        (msgspec.msgpack.encode(1), "invalid arguments"),
        (msgspec.msgpack.encode({"a": 1}), "invalid arguments"),
    ],
)
def test_wrong_argument_count_or_shape(payload: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        spec_of("add").args_from_payload(payload)


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x92\x01"])
def test_malformed_arguments(payload: bytes) -> None:
    with pytest.raises(InvalidArgument, match="malformed arguments"):
        spec_of("add").handler(Shop())(payload)


@pytest.mark.parametrize(
    ("method", "args", "param"),
    [
        ("add", (object(), 1), "a"),
        ("add", (1, object()), "b"),
        ("echo_any", ({1, object()},), "value"),
        ("add", (1, 2**64), "b"),
        ("move", (Point(1, 2), lambda: None), "dx"),
    ],
)
def test_unencodable_argument(method: str, args: tuple[Any, ...], param: str) -> None:
    with pytest.raises(InvalidArgument, match=f"argument {param!r} cannot be encoded"):
        spec_of(method).payload_from_args(args, {})


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((1, 2, 3), {}, "too many positional arguments"),
        ((), {}, "missing a required argument: 'a'"),
        ((1,), {"c": 2}, "unexpected keyword argument 'c'"),
        ((1,), {"a": 2}, "multiple values for argument 'a'"),
    ],
)
def test_binding_errors_are_type_errors(args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    spec = spec_of("add")
    with pytest.raises(TypeError, match=match) as info:
        spec.payload_from_args(args, kwargs)
    assert str(info.value).startswith(f"{spec.full_name}():")


# -- result errors ---------------------------------------------------------------


def test_result_not_matching_return_type_fails_on_decode() -> None:
    """The server encodes what the handler returned; the caller's decoder catches the mismatch."""
    spec = spec_of("wrong_result")
    result = spec.handler(Shop())(spec.payload_from_args((), {}))
    assert msgspec.msgpack.decode(result) == "not an int"  # type: ignore[arg-type]
    with pytest.raises(msgspec.ValidationError, match="Expected `int`, got `str`"):
        spec.decode_result(result)  # type: ignore[arg-type]


def test_malformed_result_fails_on_decode() -> None:
    with pytest.raises(msgspec.DecodeError):
        spec_of("add").decode_result(b"\xc1")


def test_unencodable_result_is_internal() -> None:
    spec = spec_of("unencodable_result")
    with pytest.raises(Internal, match="result cannot be encoded") as info:
        spec.handler(Shop())(spec.payload_from_args((), {}))
    assert info.value.code.value == "internal"
    assert spec.full_name in str(info.value)


def test_handler_exceptions_propagate_unchanged() -> None:
    @component(name="x.Failing")
    class Failing:
        def m(self) -> None:
            raise KeyError("k")

    spec = component_spec(Failing).methods["m"]
    with pytest.raises(KeyError):
        spec.handler(Failing())(spec.payload_from_args((), {}))


# -- compatibility: trailing parameters with defaults ------------------------------


def test_trailing_parameters_left_out_are_not_sent_and_the_server_fills_them_in() -> None:
    spec = spec_of("greet")  # greet(name, greeting="hello", punct="!")
    assert spec.required == 1
    assert spec.payload_from_args(("ann",), {}) == msgspec.msgpack.encode(("ann",))
    assert spec.payload_from_args(("ann", "hi"), {}) == msgspec.msgpack.encode(("ann", "hi"))
    # A later one passed by name: the ones before it are sent with the client's defaults.
    assert spec.payload_from_args(("ann",), {"punct": "?"}) == msgspec.msgpack.encode(("ann", "hello", "?"))
    assert spec.args_from_payload(msgspec.msgpack.encode(("ann",))) == ("ann", "hello", "!")
    assert spec.args_from_payload(msgspec.msgpack.encode(("ann", "hi"))) == ("ann", "hi", "!")
    # A shorter array is still typed, and the error names the parameter.
    with pytest.raises(InvalidArgument, match="greet: invalid argument 'name'"):
        spec.args_from_payload(msgspec.msgpack.encode((1,)))


def test_a_required_keyword_only_parameter_after_defaults() -> None:
    @component(name="x.KwAfterDefaults")
    class KwAfterDefaults:
        def m(self, a: int = 1, *, b: int) -> int:
            return a + b

    spec = component_spec(KwAfterDefaults).methods["m"]
    assert spec.required == 2
    assert spec.payload_from_args((), {"b": 2}) == msgspec.msgpack.encode((1, 2))
    with pytest.raises(InvalidArgument, match=r"x.KwAfterDefaults.m: missing argument 'b': the call sent 1 of 2"):
        spec.args_from_payload(msgspec.msgpack.encode((1,)))
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        spec.payload_from_args((), {})


def test_a_large_argument_array_is_counted_from_its_header() -> None:
    spec = spec_of("greet")
    payload = msgspec.msgpack.encode(tuple(range(20)))  # array 16
    assert payload[0] == 0xDC
    with pytest.raises(InvalidArgument, match="the call sent 20 arguments, but this server's version"):
        spec.args_from_payload(payload)


# -- method shapes @component cannot serve ------------------------------------------


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("async def m(self) -> int:\n    yield 1", r"Shape\.m: an async generator is a stream method: annotate it"),
        ("def m(self) -> int:\n    yield 1", r"Shape\.m: a generator is a stream method: annotate it -> Iterator"),
        (
            "async def m(self, a: AsyncIterator[int], b: AsyncIterator[int]) -> int: pass",
            r"Shape\.m: a stream method takes the caller's items in one parameter",
        ),
        (
            "async def m(self, *, a: AsyncIterator[int]) -> int: pass",
            r"Shape\.m: parameter 'a' takes the caller's items: it must be positional",
        ),
        ("def m(self, a: AsyncIterator[int]) -> int: pass", r"Shape\.m: a method that takes the caller's items must"),
        (
            "async def m(self) -> AsyncIterator[Unsupported]:\n    yield 1",
            r"Shape\.m: unsupported type in signature: the stream's items is",
        ),
        ("def m(self, *rest: int) -> None: pass", r"Shape\.m: \*rest is not supported: arguments travel as a fixed"),
        ("def m(self, **extra: int) -> None: pass", r"Shape\.m: \*\*extra is not supported.*a dict or a Struct"),
        ("def m() -> None: pass", r"Shape\.m: an RPC method takes self as its first parameter"),
        ("def m(*args) -> None: pass", r"Shape\.m: an RPC method takes self"),
        ("def m(self, a: Unsupported) -> None: pass", r"Shape\.m: unsupported type in signature: parameter 'a' is"),
        ("def m(self, a: int) -> Unsupported: pass", r"Shape\.m: unsupported type in signature: the result is"),
        ("def m(self, a: NoSuchName) -> None: pass", r"Shape\.m: cannot resolve type hints"),
    ],
)
def test_method_shapes_that_cannot_be_served_are_rejected_by_name(source: str, match: str) -> None:
    namespace: dict[str, Any] = {"Unsupported": Unsupported, "AsyncIterator": AsyncIterator}
    exec(source, namespace)
    shape = type("Shape", (), {"m": namespace["m"], "__module__": __name__})
    with pytest.raises(RegistrationError, match=match):
        component(name="x.Shape")(shape)


def test_object_means_any_value() -> None:
    @component(name="x.Objects")
    class Objects:
        def m(self, value: object) -> object:
            return value

    spec = component_spec(Objects).methods["m"]
    assert spec.args_from_payload(spec.payload_from_args(([1, "a"],), {})) == ([1, "a"],)


def test_private_methods_are_not_checked_or_served() -> None:
    @component(name="x.Private")
    class Private:
        def _helper(self, *args: object) -> object:  # any shape: not an RPC method
            yield args

        def m(self) -> int:
            return 1

    assert list(component_spec(Private).methods) == ["m"]


# -- declared errors ----------------------------------------------------------------


class OutOfStock(Exception):
    def __init__(self, sku: str, left: int = 0) -> None:
        super().__init__(sku, left)


class WithStruct(Exception):
    def __init__(self, item: Item) -> None:
        super().__init__(item)


class Untyped(Exception):
    pass


class Subclassed(OutOfStock):
    pass


@component(name="x.Declaring", errors=(OutOfStock, WithStruct, Untyped))
class Declaring:
    def m(self) -> None:
        pass


def _rebuilt(exc: BaseException) -> BaseException:
    """What a caller of x.Declaring.m gets for ``exc``, raised by its handler (on a version 2 connection)."""
    from callrt.connection.client import remote_error
    from callrt.connection.server import error_frame
    from callrt.errors import ErrorCode

    frame = error_frame(1, exc, args=True)
    remote = remote_error(ErrorCode.parse(frame.code), frame.remote_type, frame.message, frame.traceback, frame.args)
    return caller_error(component_spec(Declaring).methods["m"], remote)


def test_declared_errors_are_rebuilt_with_their_args() -> None:
    assert set(component_spec(Declaring).errors) == {
        f"{__name__}.OutOfStock",
        f"{__name__}.WithStruct",
        f"{__name__}.Untyped",
    }
    rebuilt = _rebuilt(OutOfStock("x1", 3))
    assert type(rebuilt) is OutOfStock
    assert rebuilt.args == ("x1", 3)
    # Typed by __init__'s annotations: a Struct comes back as the Struct.
    rebuilt = _rebuilt(WithStruct(Item("a", 2)))
    assert type(rebuilt) is WithStruct
    assert rebuilt.args == (Item("a", 2),)
    # Without an __init__ of its own, any MessagePack values.
    assert _rebuilt(Untyped("a", [1, 2])).args == ("a", [1, 2])


def test_only_exactly_declared_classes_with_encodable_args_are_rebuilt() -> None:
    from callrt.errors import RemoteError

    assert declared_error_args(OutOfStock("x", 1)) == (f"{__name__}.OutOfStock", msgspec.msgpack.encode(("x", 1)))
    for exc in [Subclassed("x", 1), Untyped(object()), KeyError("k")]:
        rebuilt = _rebuilt(exc)
        assert type(rebuilt) is RemoteError, exc
        assert rebuilt.remote_args is None
    # Args the client's class does not take: the plain RemoteError, never a half-built exception.
    remote = RemoteError("m", remote_type=f"{__name__}.OutOfStock", remote_args=msgspec.msgpack.encode((1, 2, 3)))
    assert caller_error(component_spec(Declaring).methods["m"], remote) is remote


def test_version_1_callers_get_no_args() -> None:
    from callrt.connection.server import error_frame

    assert error_frame(1, OutOfStock("x", 1)).args is None
    assert error_frame(1, OutOfStock("x", 1)).remote_type == f"{__name__}.OutOfStock"
    assert error_frame(1, OutOfStock("x", 1), args=True).args == msgspec.msgpack.encode(("x", 1))


class NotDecodable(Exception):
    def __init__(self, thing: Unsupported) -> None:
        super().__init__(thing)


class NamedTwice(Exception):
    pass


@pytest.mark.parametrize(
    ("errors", "match"),
    [
        ((42,), r"Bad: errors= takes Exception subclasses, not 42"),
        ((KeyboardInterrupt,), r"errors= takes Exception subclasses"),
        ((InvalidArgument,), r"Bad: InvalidArgument is callrt's own"),
        ((NotDecodable,), r"Bad: errors: NotDecodable.__init__: its arguments travel as MessagePack"),
        ({"a name": NamedTwice}, r"invalid error name 'a name'"),
        ({"x.Same": NamedTwice, "x.Same2": NamedTwice, "x.Other": Untyped, "x.Dup": OutOfStock}, "already declared"),
    ],
)
def test_bad_error_declarations(errors: Any, match: str) -> None:
    bad = type("Bad", (), {"m": lambda self: None, "__module__": __name__})
    with pytest.raises(RegistrationError, match=match):
        component(name="x.Bad", errors=errors)(bad)
