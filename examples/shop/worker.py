"""``python -m examples.shop.worker pricing ADDRESS`` or ``... cart ADDRESS PRICING_ENDPOINT``."""

from __future__ import annotations

import functools
import sys

import anyio

import callrt
from callrt import call

from .api import PricingAPI
from .components import Cart, Pricing


async def serve_until_signalled(address: str, component: object) -> None:
    """Serve until SIGTERM or SIGINT, then drain; READY once listening (the signal handlers are in place by then)."""
    async with anyio.create_task_group() as tg:
        server = await tg.start(functools.partial(call.serve, address, component))
        print("READY", server.endpoint, flush=True)


async def main(role: str, address: str, *deps: str) -> None:
    if role == "pricing":
        await serve_until_signalled(address, Pricing())
    else:
        # The cart worker is itself a client of the pricing worker.
        async with call.connect(call.ConstantResolver(deps)) as pricing:
            await serve_until_signalled(address, Cart(pricing.stub(PricingAPI)))


if __name__ == "__main__":
    callrt.run(main, *sys.argv[1:])
