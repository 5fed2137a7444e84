"""``raw`` streams, the floor: length-prefixed frames written on an ``asyncio.Protocol`` as fast as the socket allows.

A stream is a connection of its own. The client sends the item size (4 bytes,
big-endian); the server then writes frames — a 4-byte big-endian length and
the payload, the header packed per frame — until the transport calls
``pause_writing``, and again from ``resume_writing``: the transport's buffer
(uvloop's or asyncio's high-water mark) is the only flow control. At most
1,024 frames are written per loop iteration, so the producer never holds the
loop when the socket keeps up. The client splits what it reads into frames
(one ``bytes`` object each, as :mod:`bench.systems.raw` does) and counts them.

``--batch N`` (both sides accept it; the server uses it) joins N frames into
one ``write``, as ``raw --coalesce`` joins a loop iteration's frames; 1 (the
default) writes each frame on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from bench.common import Address
from bench.systems.streams_base import StreamClient, StreamSystem, Tally

__all__ = ("STREAM_SYSTEM",)

_LENGTH = struct.Struct("!I")
_PER_ITERATION = 1024  # frames written before the producer lets the loop run


class _Producer(asyncio.Protocol):
    def __init__(self, batch: int) -> None:
        self._batch = max(1, batch)
        self._request = bytearray()
        self._payload = b""
        self._paused = False
        self._scheduled = False
        self._closed = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._payload or len(self._request) >= _LENGTH.size:
            return  # the stream is running: nothing more is expected
        self._request += data
        if len(self._request) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._request)
            self._payload = bytes(size) or b"\x00"
            self._produce()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._schedule()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True

    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._produce)

    def _produce(self) -> None:
        self._scheduled = False
        payload, write, pack = self._payload, self._transport.write, _LENGTH.pack
        size, batch = len(payload), self._batch
        written = 0
        while not self._paused and not self._closed:
            if written >= _PER_ITERATION:
                self._schedule()
                return
            if batch == 1:
                write(pack(size) + payload)
            else:
                write(b"".join([pack(size) + payload for _ in range(batch)]))
            written += batch


class _Counter(asyncio.Protocol):
    def __init__(self, size: int, tally: Tally) -> None:
        self._size = size
        self._tally = tally
        self._buffer = bytearray()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(_LENGTH.pack(self._size))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        offset, end = 0, len(buffer)
        while end - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            stop = offset + _LENGTH.size + length
            if stop > end:
                break
            frames.append(bytes(buffer[offset + _LENGTH.size : stop]))
            offset = stop
        if offset:
            del buffer[:offset]
        self._tally.n += len(frames)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def _serve(address: Address, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    host, port = address.host_port
    server = await loop.create_server(lambda: _Producer(args.batch), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


@asynccontextmanager
async def _connect(address: Address, args: argparse.Namespace) -> AsyncIterator[StreamClient]:
    loop = asyncio.get_running_loop()

    async def run(size: int, tally: Tally) -> None:
        protocol = _Counter(size, tally)
        transport, _ = await loop.create_connection(lambda: protocol, *address.host_port)
        try:
            await protocol.lost  # the server never ends a stream: this runs until cancelled
        finally:
            transport.close()

    yield StreamClient(run=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=1, help="frames joined into one write by the server")


STREAM_SYSTEM = StreamSystem(name="raw", serve=_serve, connect=_connect, add_arguments=_add_arguments)
