"""The I/O shell around the sans-IO protocol: sockets in, frames out.

Two shells share ``callrt.protocol`` and the connection logic of
``callrt.server`` and ``callrt.client``: an asyncio Protocol (the fast path,
uvloop's when installed) and anyio byte streams (trio, or asyncio on
request). OS and anyio errors are mapped to ``callrt.errors`` here, at the
edge, and go no further.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sniffio
from anyio.abc import TaskGroup

from ..client import ClientSession
from ..endpoints import Endpoint
from ..options import ClientOptions
from ..server import Server

__all__ = ("listen", "open_session", "use_protocol")


def use_protocol(transport: str) -> bool:
    """Whether the asyncio Protocol path serves the ``transport`` option in the running loop."""
    if transport == "stream":
        return False
    asyncio_loop = sniffio.current_async_library() == "asyncio"
    if transport == "protocol" and not asyncio_loop:
        raise RuntimeError('transport="protocol" needs asyncio')
    return asyncio_loop


@asynccontextmanager
async def listen(endpoint: Endpoint, server: Server, protocol_path: bool, conn_tg: TaskGroup) -> AsyncIterator[Endpoint]:
    """Accept connections for ``server`` on ``endpoint`` while the context is open; yields the bound endpoint.

    Leaving the context stops accepting; live connections stay for the drain.
    Stream connections run in ``conn_tg``.
    """
    if protocol_path:
        from ._asyncio import listen_protocol

        async with listen_protocol(endpoint, server) as bound:
            yield bound
    else:
        from ._stream import listen_stream

        async with listen_stream(endpoint, server, conn_tg) as bound:
            yield bound


@asynccontextmanager
async def open_session(endpoint: Endpoint, options: ClientOptions, protocol_path: bool) -> AsyncIterator[ClientSession]:
    """A connected, handshaken session to ``endpoint``; closed on exit.

    :raises ~callrt.errors.CommunicationError: the connection or handshake failed or timed out.
    """
    if protocol_path:
        from ._asyncio import open_client

        async with open_client(endpoint, options) as session:
            yield session
    else:
        from ._stream import open_stream_client

        async with open_stream_client(endpoint, options) as session:
            yield session
