"""The shop's components, served by the workers; they implement the interfaces of ``api``."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from callrt import component, not_retriable

from .api import CartAPI, Item, PricingAPI


@component(implements=PricingAPI)
class Pricing:
    PRICES: ClassVar[dict[str, Decimal]] = {"apple": Decimal("0.40"), "pear": Decimal("0.55"), "fig": Decimal("1.20")}

    def price(self, sku: str) -> Decimal:
        return self.PRICES[sku]


@component(implements=CartAPI)
class Cart:
    """Keeps carts; asks the Pricing component, in another process, for prices."""

    def __init__(self, pricing: PricingAPI | None = None) -> None:
        self._pricing = pricing  # a stub of the Pricing worker, typed as its interface
        self._carts: dict[str, list[Item]] = {}

    async def add(self, user: str, item: Item) -> int:
        self._carts.setdefault(user, []).append(item)
        return sum(i.qty for i in self._carts[user])

    async def total(self, user: str) -> Decimal:
        assert self._pricing is not None
        total = Decimal(0)
        for item in self._carts.get(user, []):
            total += await self._pricing.price(item.sku) * item.qty
        return total

    @not_retriable
    async def checkout(self, user: str) -> Decimal:
        total = await self.total(user)
        self._carts.pop(user, None)
        return total
