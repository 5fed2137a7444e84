"""An interface and the component that implements it (tests/test_interface.py): the client imports only ``ShelfAPI``."""

from __future__ import annotations

from typing import Protocol

from callrt import call, component, interface, not_retriable


@interface(name="tests.Shelf")
class ShelfAPI(Protocol):
    async def put(self, sku: str, qty: int = 1) -> int: ...

    async def count(self, sku: str) -> int: ...

    async def tenant(self) -> str: ...

    @not_retriable
    async def take(self, sku: str) -> int: ...


@component(implements=ShelfAPI)
class Shelf:
    def __init__(self) -> None:
        self.stock: dict[str, int] = {}

    async def put(self, sku: str, qty: int = 1) -> int:
        self.stock[sku] = self.stock.get(sku, 0) + qty
        return self.stock[sku]

    def count(self, sku: str) -> int:  # a plain def behind an async def of the interface
        return self.stock.get(sku, 0)

    async def tenant(self) -> str:
        ctx = call.current_call()
        return "" if ctx is None else ctx.metadata.get("tenant", "")

    @not_retriable
    async def take(self, sku: str) -> int:
        return self.stock.pop(sku, 0)
