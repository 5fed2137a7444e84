"""The in-memory transport: ``memory://NAME`` endpoints, a server and its clients in one event loop, no sockets.

Connections are pairs of in-memory byte streams carried by the stream shell,
so a call takes the same path through the protocol, the connection logic and
the client as over a socket (deadlines, cancellation, errors, goaway, drain);
only the bytes never leave the process. It runs on every anyio backend, and
on trio's ``MockClock``, since nothing in it waits on the operating system.
Meant for tests (``callrt.testing`` documents it); a name is free again once
its server stops. It has no TLS: a server or client with ``tls`` set fails on it
rather than run plaintext.
"""

from __future__ import annotations

import errno
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import ByteStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..connection.client import ClientSession
from ..connection.server import Server
from ..context import Peer
from ..endpoints import Endpoint
from ..errors import CommunicationError
from ..options import ClientOptions
from ._stream import client_over, serve_stream
from .base import Transport, connect_errors

__all__ = ("MemoryTransport", "memory_stream_pair", "raw_listener")

# Chunks in flight one way before the sender waits, like a socket's buffer filling up.
_CHUNKS_IN_FLIGHT = 64


class _MemoryByteStream(ByteStream):
    """One end of an in-memory connection."""

    def __init__(self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]) -> None:
        self._send = send
        self._receive = receive
        self._left = b""  # the rest of a chunk larger than what receive() was asked for

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = self._left or await self._receive.receive()  # EndOfStream once the peer closed
        self._left = data[max_bytes:]
        return data[:max_bytes]

    async def send(self, item: bytes) -> None:
        if item:
            await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_stream_pair() -> tuple[ByteStream, ByteStream]:
    """Two connected in-memory byte streams: what one sends, the other receives."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](_CHUNKS_IN_FLIGHT)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](_CHUNKS_IN_FLIGHT)
    return _MemoryByteStream(a_send, a_receive), _MemoryByteStream(b_send, b_receive)


# name -> how to hand a new connection's server end to its server
_listeners: dict[str, Callable[[ByteStream], None]] = {}


@asynccontextmanager
async def raw_listener(endpoint: Endpoint) -> AsyncIterator[MemoryObjectReceiveStream[ByteStream]]:
    """Listen on a ``memory://`` endpoint without a callrt server: yields the server ends of new connections.

    For tests of what a client does when the server misbehaves (never answers,
    answers garbage, goes silent after the hello).
    """
    if endpoint.address in _listeners:
        raise OSError(errno.EADDRINUSE, f"a server already listens on {endpoint}")
    send, receive = anyio.create_memory_object_stream[ByteStream](math.inf)
    _listeners[endpoint.address] = send.send_nowait
    try:
        async with receive:
            yield receive
    finally:
        del _listeners[endpoint.address]
        send.close()


class MemoryTransport(Transport):
    """``memory://NAME``: in-process connections to a server listening under ``NAME``."""

    @asynccontextmanager
    async def listen(self, endpoint: Endpoint, server: Server, conn_tg: TaskGroup) -> AsyncIterator[Endpoint]:
        if server.options.tls is not None:  # not silently plaintext: a test of TLS must not pass without it
            raise ValueError(
                f"cannot serve TLS on {endpoint}: the memory transport has no TLS (ServerOptions.tls is set);"
                " serve TLS on tcp:// or unix://, or leave tls unset for memory://"
            )
        name = endpoint.address
        if name in _listeners:
            raise OSError(errno.EADDRINUSE, f"a server already listens on {endpoint}")

        peer = Peer(str(endpoint), local=True)

        def accept(stream: ByteStream) -> None:
            conn_tg.start_soon(serve_stream, server, stream, peer)

        _listeners[name] = accept
        try:
            yield endpoint
        finally:
            del _listeners[name]

    @asynccontextmanager
    async def connect(self, endpoint: Endpoint, options: ClientOptions) -> AsyncIterator[ClientSession]:
        with connect_errors(endpoint, options):
            if options.tls is not None:
                raise CommunicationError(
                    f"cannot connect to {endpoint}: the memory transport has no TLS (ClientOptions.tls is set)"
                )
            accept = _listeners.get(endpoint.address)
            if accept is None:
                raise ConnectionRefusedError(errno.ECONNREFUSED, f"no server listens on {endpoint}")
            client_end, server_end = memory_stream_pair()
            accept(server_end)
        async with client_over(client_end, endpoint, options) as session:
            yield session
