"""Version 2 of the component in compat_v1.py: what changed, and whether old and new callers survive it.

- ``add`` gained a trailing parameter with a default (compatible both ways while
  a caller does not pass it);
- ``Item`` and ``Note`` gained fields with defaults (compatible both ways);
- ``stamp`` gained a parameter without a default (old callers fail, naming it);
- ``weigh`` changed a parameter's type (callers of the other version fail, naming it);
- ``count`` is new (an old server does not serve it);
- a ``Trap`` is declared under the name of v1's ``Undeclared``, which v1 never
  declared: a v1 caller must not rebuild it.
"""

from __future__ import annotations

import dataclasses

import msgspec

from callrt import component
from callrt.errors import ErrorCode, RemoteError


class Item(msgspec.Struct):
    sku: str
    qty: int
    note: str = ""


@dataclasses.dataclass
class Note:
    text: str
    author: str = "anon"


class OutOfStock(Exception):
    def __init__(self, sku: str, left: int) -> None:
        super().__init__(sku, left)


class Refused(RemoteError):
    default_code = ErrorCode.FAILED_PRECONDITION


class Trap(Exception):
    pass


@component(
    name="tests.compat.Inventory",
    errors={
        "tests.compat.OutOfStock": OutOfStock,
        "tests.compat.Refused": Refused,
        "tests.compat_v1.Undeclared": Trap,
    },
)
class Inventory:
    def add(self, sku: str, qty: int, reason: str = "restock") -> str:
        return f"{sku}:{qty}:{reason}"

    def put(self, item: Item) -> Item:
        return Item(item.sku, item.qty, item.note or "v2")

    def annotate(self, note: Note) -> Note:
        return note

    def stamp(self, sku: str, when: int) -> str:
        return f"{sku}@{when}"

    def weigh(self, grams: str) -> str:
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
        raise Trap(kind)

    def count(self) -> int:
        return 0
