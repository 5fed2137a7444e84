"""Method keys and the HandlerMap."""

from __future__ import annotations

import msgspec
import pytest
import xxhash

import callrt.keys
from callrt import component
from callrt.errors import RegistrationError
from callrt.handlers import HandlerMap
from callrt.keys import MethodKey, make_method_key


def echo(payload: bytes) -> bytes:
    return payload


async def async_echo(payload: bytes) -> bytes:
    return payload


# -- make_method_key -----------------------------------------------------------


@pytest.mark.parametrize(
    ("component_name", "method"),
    [("shop.Cart", "add"), ("tests.Echo", "echo"), ("", ""), ("a", "b"), ("café.Straße", "größe")],
)
def test_key_is_xxh3_128_of_dotted_name(component_name: str, method: str) -> None:
    key = make_method_key(component_name, method)
    assert key == xxhash.xxh3_128_digest(f"{component_name}.{method}".encode())
    assert isinstance(key, bytes)
    assert len(key) == 16


@pytest.mark.parametrize(
    ("component_name", "method", "hex_key"),
    [
        # Computed once and pinned: a change of hash function, digest byte order or
        # string encoding changes every key on the wire and must not pass unnoticed.
        ("shop.Cart", "add", "dba87db0fd54da51fd218dfe3dbcacef"),
        ("tests.Echo", "echo", "a9891d87c3714fa8ee05dabcbb55c9fa"),
        ("café.Straße", "größe", "ac33650a008fc6da1743652ed67211d9"),
    ],
)
def test_key_known_values(component_name: str, method: str, hex_key: str) -> None:
    assert make_method_key(component_name, method).hex() == hex_key


def test_key_is_big_endian_digest() -> None:
    key = make_method_key("shop.Cart", "add")
    assert int.from_bytes(key, "big") == xxhash.xxh3_128_intdigest(b"shop.Cart.add")


def test_key_depends_only_on_dotted_name() -> None:
    # The key is of the joined string, so these two spell the same method.
    assert make_method_key("shop.Cart", "add") == make_method_key("shop", "Cart.add")
    assert make_method_key("shop.Cart", "add") != make_method_key("shop.Cart", "Add")
    assert make_method_key("shop.Cart", "add") != make_method_key("shop.Cart", "remove")


# -- HandlerMap ----------------------------------------------------------------


def test_set_and_get() -> None:
    handlers = HandlerMap()
    key = handlers.set("shop.Cart", "add", echo)
    assert key == make_method_key("shop.Cart", "add")
    entry = handlers.get(key)
    assert entry is not None
    assert entry.name == "shop.Cart.add"
    assert entry.handler is echo
    assert entry.is_async is False
    assert handlers.get(make_method_key("shop.Cart", "remove")) is None
    assert handlers.get(b"") is None


def test_async_handler_is_flagged() -> None:
    handlers = HandlerMap()
    entry = handlers.get(handlers.set("shop.Cart", "add", async_echo))
    assert entry is not None
    assert entry.is_async is True


def test_get_accepts_plain_bytes() -> None:
    handlers = HandlerMap()
    handlers.set("shop.Cart", "add", echo)
    raw = bytes(xxhash.xxh3_128_digest(b"shop.Cart.add"))
    assert handlers.get(raw) is not None
    assert handlers.get(MethodKey(raw)) is not None


def test_duplicate_registration_is_an_error() -> None:
    handlers = HandlerMap()
    handlers.set("shop.Cart", "add", echo)
    with pytest.raises(RegistrationError, match="registered twice"):
        handlers.set("shop.Cart", "add", async_echo)
    # The first registration stands.
    entry = handlers.get(make_method_key("shop.Cart", "add"))
    assert entry is not None
    assert entry.handler is echo
    assert len(handlers) == 1


def test_same_dotted_name_from_different_parts_is_a_duplicate() -> None:
    handlers = HandlerMap()
    handlers.set("shop.Cart", "add", echo)
    with pytest.raises(RegistrationError, match="registered twice"):
        handlers.set("shop", "Cart.add", echo)


def test_key_collision_of_different_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callrt.keys, "make_method_key", lambda component, method: MethodKey(bytes(16)))
    handlers = HandlerMap()
    handlers.set("shop.Cart", "add", echo)
    with pytest.raises(RegistrationError, match="collides with 'shop.Cart.add'") as info:
        handlers.set("shop.Cart", "remove", echo)
    assert "shop.Cart.remove" in str(info.value)
    assert len(handlers) == 1


def test_len_iter_names() -> None:
    handlers = HandlerMap()
    assert len(handlers) == 0
    assert list(handlers) == []
    assert handlers.names() == []
    keys = [handlers.set("b.C", "z", echo), handlers.set("a.B", "y", echo), handlers.set("b.C", "a", async_echo)]
    assert len(handlers) == 3
    assert list(handlers) == keys
    assert handlers.names() == ["a.B.y", "b.C.a", "b.C.z"]


@component(name="shop.Cart")
class Cart:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, item: str) -> int:
        self.items.append(item)
        return len(self.items)

    async def count(self) -> int:
        return len(self.items)

    def _private(self) -> None:
        raise AssertionError

    @staticmethod
    def helper() -> None:
        raise AssertionError

    @property
    def size(self) -> int:
        return len(self.items)


def test_add_handlers_registers_public_methods() -> None:
    handlers = HandlerMap()
    cart = Cart()
    handlers.add_handlers(None, cart)
    assert handlers.names() == ["shop.Cart.add", "shop.Cart.count"]
    add = handlers.get(make_method_key("shop.Cart", "add"))
    count = handlers.get(make_method_key("shop.Cart", "count"))
    assert add is not None and count is not None
    assert add.is_async is False
    assert count.is_async is True
    # The handler is bound to this instance and speaks bytes.
    assert msgspec.msgpack.decode(add.handler(msgspec.msgpack.encode(("apple",)))) == 1  # type: ignore[arg-type]
    assert cart.items == ["apple"]


def test_add_handlers_name_override() -> None:
    handlers = HandlerMap()
    handlers.add_handlers("eu.shop.Cart", Cart())
    assert handlers.names() == ["eu.shop.Cart.add", "eu.shop.Cart.count"]
    assert handlers.get(make_method_key("shop.Cart", "add")) is None
    assert handlers.get(make_method_key("eu.shop.Cart", "add")) is not None


def test_add_handlers_twice_is_an_error_but_two_names_are_fine() -> None:
    handlers = HandlerMap()
    handlers.add_handlers(None, Cart())
    with pytest.raises(RegistrationError):
        handlers.add_handlers(None, Cart())
    handlers.add_handlers("other.Cart", Cart())
    assert len(handlers) == 4


class NotAComponent:
    def add(self, item: str) -> None:
        pass


@pytest.mark.parametrize("impl", [NotAComponent(), object(), 42, None])
def test_add_handlers_of_non_component(impl: object) -> None:
    handlers = HandlerMap()
    with pytest.raises(RegistrationError, match="not a @component"):
        handlers.add_handlers(None, impl)
    assert len(handlers) == 0
