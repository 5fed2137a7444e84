"""Version 1 of a component, for the compatibility tests (tests/test_compat.py); version 2 is compat_v2.py.

Both versions share the component's name, so old and new clients and servers
call each other as during a rolling deployment. Each version defines its own
classes (as two deployed versions of one module would); the declared
exceptions travel under explicit names both versions give them.
"""

from __future__ import annotations

import dataclasses

import msgspec

from callrt import component
from callrt.errors import ErrorCode, RemoteError


class Item(msgspec.Struct):
    sku: str
    qty: int


@dataclasses.dataclass
class Note:
    text: str


class OutOfStock(Exception):
    def __init__(self, sku: str, left: int) -> None:
        super().__init__(sku, left)


class Refused(RemoteError):
    default_code = ErrorCode.FAILED_PRECONDITION


class Undeclared(Exception):
    """Never declared by this version; counts its instances, which a client must never make from the wire."""

    made = 0

    def __init__(self, *args: object) -> None:
        Undeclared.made += 1
        super().__init__(*args)


@component(
    name="tests.compat.Inventory", errors={"tests.compat.OutOfStock": OutOfStock, "tests.compat.Refused": Refused}
)
class Inventory:
    def add(self, sku: str, qty: int) -> str:
        return f"{sku}:{qty}"

    def put(self, item: Item) -> Item:
        return item

    def annotate(self, note: Note) -> Note:
        return note

    def stamp(self, sku: str) -> str:
        return sku

    def weigh(self, grams: int) -> int:
        return grams

    def take(self, sku: str, qty: int) -> int:
        if qty > 3:
            raise OutOfStock(sku, 3)
        if qty < 0:
            raise Refused(f"cannot take {qty} of {sku!r}")
        return qty

    def fail(self, kind: str) -> None:
        if kind == "key":
            raise KeyError(kind)
        raise Undeclared(kind)
