"""``callrt`` streams: a component whose ``gen`` yields ``size``-byte items as fast as the caller's credit allows.

``gen`` yields one ``bytes`` object over and over (the item is encoded once per
yield, as any item is); ``blob`` yields a fresh ``bytes`` per item and counts
what it handed to the connection, which ``produced`` reports (the memory
figure compares it with what the caller took). ``echo`` is the unary echo of
:mod:`bench.systems.callrt_rt`, so the same server gives callrt's unary figure.

``--window N`` and ``--window-bytes N`` set ``stream_window`` and
``stream_window_bytes`` on both sides (left out: the library's defaults).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bench.common import Address
from bench.systems.streams_base import StreamClient, StreamSystem, Tally
from callrt import call, component, inline

__all__ = ("STREAM_SYSTEM", "Streams")


@component(name="bench.Streams")
class Streams:
    """Server streams for the bench, and a unary echo beside them."""

    def __init__(self) -> None:
        self.count = 0  # items ``blob`` handed to the connection, over every stream

    @inline
    def echo(self, data: bytes) -> bytes:
        return data

    async def gen(self, size: int) -> AsyncIterator[bytes]:
        item = bytes(size)
        while True:
            yield item

    async def blob(self, size: int) -> AsyncIterator[bytes]:
        pad = bytes(max(0, size - 8))
        seq = 0
        while True:
            yield seq.to_bytes(8, "big") + pad  # a new object each time, as real items are
            seq += 1
            self.count += 1

    @inline
    def produced(self) -> int:
        return self.count


def _windows(args: argparse.Namespace) -> dict[str, Any]:
    chosen = {"stream_window": args.window, "stream_window_bytes": args.window_bytes}
    return {name: value for name, value in chosen.items() if value is not None}


async def _serve(address: Address, args: argparse.Namespace) -> None:
    await call.serve(address.url, Streams(), options=call.ServerOptions(**_windows(args)))


@asynccontextmanager
async def _connect(address: Address, args: argparse.Namespace) -> AsyncIterator[StreamClient]:
    options = call.ClientOptions(**_windows(args))
    async with call.connect(call.ConstantResolver([address.url]), options=options) as conn:
        stub: Any = conn.stub(Streams)
        await stub.echo(b"")  # handshake done before the connection counts as open

        async def run(size: int, tally: Tally) -> None:
            items = stub.gen(size)
            try:
                async for _ in items:
                    tally.n += 1
            finally:
                await items.aclose()

        def items(size: int) -> AsyncIterator[bytes]:
            stream: AsyncIterator[bytes] = stub.blob(size)
            return stream

        yield StreamClient(run=run, call=stub.echo, items=items, produced=stub.produced)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("callrt stream options (default: the library's)")
    group.add_argument("--window", type=int, help="stream_window on both sides (items)")
    group.add_argument("--window-bytes", type=int, help="stream_window_bytes on both sides")


STREAM_SYSTEM = StreamSystem(
    name="callrt",
    serve=_serve,
    connect=_connect,
    loops=("uvloop", "asyncio", "trio"),
    add_arguments=_add_arguments,
)
