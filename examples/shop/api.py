"""The shop's interfaces: all that a client of the shop imports."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

import msgspec

from callrt import interface, not_retriable


class Item(msgspec.Struct):
    sku: str
    qty: int


@interface(name="shop.Pricing")
class PricingAPI(Protocol):
    async def price(self, sku: str) -> Decimal: ...


@interface(name="shop.Cart")
class CartAPI(Protocol):
    async def add(self, user: str, item: Item) -> int: ...

    async def total(self, user: str) -> Decimal: ...

    @not_retriable  # on the interface: the client decides whether to retry
    async def checkout(self, user: str) -> Decimal: ...
