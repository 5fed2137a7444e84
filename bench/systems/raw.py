"""``raw``: the smallest honest framed echo on an asyncio Protocol — the floor callrt is held to.

A frame is a 4-byte big-endian length (of what follows), an 8-byte request
id and the payload. The server echoes each frame; the client keeps one future
per request id. With ``--coalesce`` (the ``raw-coalesced`` variant) both sides
gather the frames produced during one loop iteration and write them with a
single ``transport.write``; without it every frame is its own write. No
validation, flow control, deadlines or codec: whatever callrt costs above
this is the price of its features. With ``--tls-dir DIR`` (the ``raw-tls``
variant of the TLS profile) both sides speak mutual TLS 1.3 through the
loop's SSL transport, reading through a ``BufferedProtocol`` (the loop's SSL
path allocates 256 KiB per read for a plain ``Protocol``): TLS's floor.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from bench.common import Address
from bench.systems import Client, System
from bench.tls import SERVER_NAME, client_context, server_context

__all__ = ("SYSTEM",)

_HEADER = struct.Struct("!IQ")
_ID_SIZE = 8


class _FrameReader:
    """Splits a byte stream into ``(request id, payload)`` frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        offset, size = 0, len(buffer)
        while size - offset >= _HEADER.size:
            length, request_id = _HEADER.unpack_from(buffer, offset)
            end = offset + 4 + length
            if end > size:
                break
            frames.append((request_id, bytes(buffer[offset + _HEADER.size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames


class _FrameWriter:
    """Writes frames: one ``write`` each, or one per loop iteration when coalescing."""

    def __init__(self, transport: asyncio.Transport, coalesce: bool) -> None:
        self._transport = transport
        self._coalesce = coalesce
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, request_id: int, payload: bytes) -> None:
        header = _HEADER.pack(_ID_SIZE + len(payload), request_id)
        if not self._coalesce:
            self._transport.write(header + payload)
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending += (header, payload)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not self._transport.is_closing():
            self._transport.write(b"".join(pending))


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, coalesce: bool) -> None:
        self._coalesce = coalesce
        self._reader = _FrameReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._writer = _FrameWriter(cast(asyncio.Transport, transport), self._coalesce)

    def data_received(self, data: bytes) -> None:
        for request_id, payload in self._reader.feed(data):
            self._writer.write(request_id, payload)


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, coalesce: bool) -> None:
        self._coalesce = coalesce
        self._reader = _FrameReader()
        self._waiters: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count()
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._writer = _FrameWriter(cast(asyncio.Transport, transport), self._coalesce)

    def data_received(self, data: bytes) -> None:
        for request_id, payload in self._reader.feed(data):
            waiter = self._waiters.pop(request_id)
            if not waiter.done():
                waiter.set_result(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection lost"))
        self._waiters.clear()

    def request(self, payload: bytes) -> asyncio.Future[bytes]:
        request_id = next(self._ids)
        waiter = self._waiters[request_id] = self._loop.create_future()
        self._writer.write(request_id, payload)
        return waiter


class _Buffered(asyncio.BufferedProtocol):
    """A protocol's ``data_received`` behind ``get_buffer``/``buffer_updated``, for SSL transports."""

    _buffer = bytearray(256 * 1024)

    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.protocol.data_received(bytes(self._buffer[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)


async def _serve(address: Address, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    tls: dict[str, Any] = {} if args.tls_dir is None else {"ssl": server_context(args.tls_dir)}

    def factory() -> asyncio.BaseProtocol:
        protocol = _ServerProtocol(args.coalesce)
        return protocol if not tls else _Buffered(protocol)

    if address.is_unix:
        server = await loop.create_unix_server(factory, address.path, backlog=4096, **tls)
    else:
        host, port = address.host_port
        server = await loop.create_server(factory, host, port, backlog=4096, **tls)
    async with server:
        await server.serve_forever()


@asynccontextmanager
async def _connect(address: Address, args: argparse.Namespace) -> AsyncIterator[Client]:
    loop = asyncio.get_running_loop()

    tls: dict[str, Any] = {}
    if args.tls_dir is not None:
        tls = {"ssl": client_context(args.tls_dir), "server_hostname": SERVER_NAME}
    protocol = _ClientProtocol(args.coalesce)

    def factory() -> asyncio.BaseProtocol:
        return protocol if not tls else _Buffered(protocol)

    if address.is_unix:
        transport, _ = await loop.create_unix_connection(factory, address.path, **tls)
    else:
        transport, _ = await loop.create_connection(factory, *address.host_port, **tls)
    try:
        yield Client(call=protocol.request)
    finally:
        transport.close()


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coalesce",
        action="store_true",
        help="join the frames of one loop iteration into one write (both sides)",
    )
    parser.add_argument("--tls-dir", type=Path, help="mutual TLS 1.3 with the certificates in DIR (bench/tls.py)")


SYSTEM = System(
    name="raw",
    serve=_serve,
    connect=_connect,
    loops=("uvloop", "asyncio"),
    add_arguments=_add_arguments,
)
