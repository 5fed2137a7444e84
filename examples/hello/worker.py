"""The worker: serves a Greeter on every address given, until SIGTERM/SIGINT, then drains."""

from __future__ import annotations

import functools
import sys

import anyio

import callrt
from callrt import call

from .greeter import Greeter


async def main(addresses: list[str]) -> None:
    async with anyio.create_task_group() as tg:
        # serve() drains on SIGTERM and SIGINT (goaway, in-flight calls finish, close), with its
        # signal handlers in place before it listens; READY comes once it does.
        server = await tg.start(functools.partial(call.serve, addresses, Greeter()))
        print("READY", " ".join(map(str, server.endpoints)), flush=True)


if __name__ == "__main__":
    callrt.run(main, sys.argv[1:])
