"""What typed stubs accept: checked by mypy (strict) and basedpyright (strict), never run.

``tests/test_typing.py`` runs both checkers on this file (no error allowed) and
on ``stubs_errors.py`` (exactly the lines marked there). A client types its
stubs with an ``@interface``: every method ``async def``, so every call is
awaitable with the method's own argument and result types, whether the
component implements it with ``async def`` or a plain ``def``.
"""

# pyright: strict

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Protocol, assert_type

import anyio
import msgspec

from callrt import call, component, interface, not_retriable


class Item(msgspec.Struct):
    sku: str
    qty: int


@interface(name="typing.Cart")
class CartAPI(Protocol):
    async def add(self, user: str, item: Item) -> int: ...

    async def total(self, user: str) -> Decimal: ...

    async def note(self, user: str, *, text: str = "") -> None: ...

    @not_retriable
    async def checkout(self, user: str) -> Decimal: ...


@component(implements=CartAPI)
class Cart:
    def __init__(self) -> None:
        self.items: dict[str, list[Item]] = {}

    async def add(self, user: str, item: Item) -> int:
        self.items.setdefault(user, []).append(item)
        return len(self.items[user])

    def total(self, user: str) -> Decimal:  # a plain def implements an async def of the interface
        return Decimal(sum(i.qty for i in self.items.get(user, [])))

    def note(self, user: str, *, text: str = "") -> None:
        pass

    @not_retriable
    async def checkout(self, user: str) -> Decimal:
        return self.total(user)


@interface  # named "<module>.PricingAPI"
class PricingAPI(Protocol):
    async def price(self, sku: str) -> Decimal: ...


@component  # a subclass of an interface implements it (and checkers check the overrides)
class Pricing(PricingAPI):
    async def price(self, sku: str) -> Decimal:
        return Decimal("0.40")


@interface(name="typing.Feed")
class FeedAPI(Protocol):
    # A server stream: a plain def returning an async iterator, so `async for` over the call checks.
    def watch(self, topic: str) -> AsyncIterator[Item]: ...

    # A client stream: awaited for its result; the items are any async iterable.
    async def upload(self, items: AsyncIterator[Item]) -> int: ...


@component(implements=FeedAPI)
class Feed:
    async def watch(self, topic: str) -> AsyncIterator[Item]:
        yield Item(topic, 1)

    async def upload(self, items: AsyncIterator[Item]) -> int:
        return sum([item.qty async for item in items])


async def some_items() -> AsyncIterator[Item]:
    yield Item("fig", 1)


async def priced(pricing: PricingAPI, item: Item) -> Decimal:
    return await pricing.price(item.sku) * item.qty


async def client_side(client: call.Client, item: Item) -> None:
    cart = client.stub(CartAPI)
    assert_type(cart, CartAPI)
    assert_type(await cart.add("ann", item), int)
    assert_type(await cart.add(user="ann", item=Item("fig", 2)), int)
    assert_type(await cart.total("ann"), Decimal)  # a plain def on the server: awaited all the same
    assert_type(await cart.note("ann", text="gift"), None)
    assert_type(await cart.checkout("ann"), Decimal)
    with anyio.fail_after(0.5):
        assert_type(await cart.total("bob"), Decimal)

    # Per-call options, typed: the method or stub comes back with its own type.
    add = call.with_options(cart.add, call.CallOptions(shard_key=42, metadata={"tenant": "t1"}))
    assert_type(await add("bob", item), int)
    assert_type(await call.with_options(cart.checkout, call.CallOptions(retry=False))("bob"), Decimal)
    tenant = call.with_options(cart, call.CallOptions(metadata={"tenant": "t1"}))
    assert_type(tenant, CartAPI)
    assert_type(client.stub(CartAPI, options=call.CallOptions(fail_fast=True)), CartAPI)

    # A stub goes where the interface is expected, and so does a local implementation of it.
    pricing = client.stub(PricingAPI)
    assert_type(await priced(pricing, item), Decimal)
    assert_type(await priced(Pricing(), item), Decimal)

    # Streams: items typed as the interface says.
    feed = client.stub(FeedAPI)
    async for got in feed.watch("news"):
        assert_type(got, Item)
    assert_type(await feed.upload(some_items()), int)

    # The stub of a component class (not an interface) still works, typed as the class.
    assert_type(client.stub(Pricing), Pricing)


async def main() -> None:
    async with call.connect("tcp://127.0.0.1:9000") as client:
        await client_side(client, Item("apple", 3))
    async with call.start_server("tcp://127.0.0.1:0", Cart(), Pricing()) as server:
        assert_type(server.endpoints, list[call.Endpoint])
