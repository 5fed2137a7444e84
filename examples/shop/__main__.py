"""Start a pricing worker and a cart worker; fill a cart and check out through the cart worker."""

from __future__ import annotations

import subprocess
import sys

import callrt
from callrt import call

from .api import CartAPI, Item


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "examples.shop.worker", *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "READY":
        raise SystemExit(f"worker {args[0]} did not start")
    return proc, ready[1]


async def main() -> None:
    pricing, pricing_at = start("pricing", "tcp://127.0.0.1:0")
    cart, cart_at = start("cart", "tcp://127.0.0.1:0", pricing_at)
    try:
        async with call.connect(call.ConstantResolver([cart_at])) as conn:
            carts = conn.stub(CartAPI)
            await carts.add("ann", Item("apple", 3))
            count = await carts.add("ann", Item("fig", 2))
            print(f"ann has {count} items; total {await carts.total('ann')} (priced by the worker at {pricing_at})")
            print("checkout:", await carts.checkout("ann"))
    finally:
        for proc in (cart, pricing):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    callrt.run(main)
