"""The worker: serves a Greeter on every address given, until SIGTERM/SIGINT, then drains."""

from __future__ import annotations

import signal
import sys

import anyio

import callrt
from callrt import call

from .greeter import Greeter


async def main(addresses: list[str]) -> None:
    async with call.start_server(addresses, Greeter()) as server:
        print("READY", " ".join(map(str, server.endpoints)), flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return  # leaving start_server drains: goaway, in-flight calls finish, close


if __name__ == "__main__":
    callrt.run(main, sys.argv[1:])
