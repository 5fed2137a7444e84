"""``grpc`` streams: grpc.aio unary-stream calls carrying raw bytes (no protobuf).

As :mod:`bench.systems.grpc_aio` does for unary calls, the server registers a
generic handler without (de)serializers: ``Gen``'s request is the item size
(4 bytes, big-endian) and its handler, an async generator, yields one
``bytes`` object of that size over and over; HTTP/2 flow control paces it.
The client calls ``channel.unary_stream(path)`` without deserializers and
iterates the call. The channel uses a local subchannel pool, so it is its
own connection.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc  # type: ignore[import-untyped,unused-ignore]  # no stubs unless types-grpcio is installed
import grpc.aio  # type: ignore[import-untyped,unused-ignore]

from bench.common import Address
from bench.systems.streams_base import StreamClient, StreamSystem, Tally

__all__ = ("STREAM_SYSTEM",)

_SERVICE = "bench.Streams"
_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


async def _gen(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
    item = bytes(int.from_bytes(request, "big"))
    while True:
        yield item


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def _target(address: Address) -> str:
    if address.is_unix:
        return f"unix:{address.path}"
    host, port = address.host_port
    return f"{host}:{port}"


async def _serve(address: Address, args: argparse.Namespace) -> None:
    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Gen": grpc.unary_stream_rpc_method_handler(_gen),
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        },
    )
    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(_target(address))
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(None)


@asynccontextmanager
async def _connect(address: Address, args: argparse.Namespace) -> AsyncIterator[StreamClient]:
    options: list[tuple[str, int | str]] = [*_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(_target(address), options=options) as channel:
        await channel.channel_ready()
        gen = channel.unary_stream(f"/{_SERVICE}/Gen")
        echo = channel.unary_unary(f"/{_SERVICE}/Echo")

        async def run(size: int, tally: Tally) -> None:
            stream = gen(size.to_bytes(4, "big"))
            try:
                async for _ in stream:
                    tally.n += 1
            finally:
                stream.cancel()

        yield StreamClient(run=run, call=echo)


STREAM_SYSTEM = StreamSystem(name="grpc", serve=_serve, connect=_connect)
