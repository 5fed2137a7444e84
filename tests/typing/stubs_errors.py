"""What typed stubs reject: each line marked ``# expect-error`` must be an error in mypy (strict)
and in basedpyright, and no other line may be (``tests/test_typing.py``). Never run."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

import msgspec

from callrt import call, interface


class Item(msgspec.Struct):
    sku: str
    qty: int


@interface(name="typing.Cart")
class CartAPI(Protocol):
    async def add(self, user: str, item: Item) -> int: ...

    async def total(self, user: str) -> Decimal: ...

    async def note(self, user: str, *, text: str = "") -> None: ...


async def wrong(client: call.Client, item: Item) -> None:
    cart = client.stub(CartAPI)
    await cart.add("ann", 3)  # expect-error: an int where an Item goes
    await cart.add(7, item)  # expect-error: an int where a str goes
    await cart.add("ann")  # expect-error: an argument missing
    await cart.add("ann", item, 1)  # expect-error: one argument too many
    await cart.note("ann", txt="gift")  # expect-error: no such parameter
    await cart.note("ann", "gift")  # expect-error: text is keyword-only
    count: str = await cart.add("ann", item)  # expect-error: it returns an int
    total: int = await cart.total("ann")  # expect-error: it returns a Decimal
    more = cart.add("ann", item) + 1  # expect-error: not awaited
    await cart.remove("ann")  # expect-error: no such method
    await call.with_options(cart.add, call.CallOptions(shard_key=7))("ann", 3)  # expect-error: still typed
    bad: int = await call.with_options(cart, call.CallOptions())().total("ann")  # expect-error: a stub is no function
    call.CallOptions(shard_key="seven")  # expect-error: shard keys are ints
    client.stub(CartAPI, options=3)  # expect-error: options are CallOptions
    print(count, total, more, bad)
