"""The I/O shells around the sans-IO protocol and connection logic: bytes in, frames out.

Three transports implement :class:`~callrt.transport.base.Transport`:

- ``_asyncio`` — :class:`ProtocolTransport`: asyncio Protocols, the fast path (uvloop's when installed);
- ``_stream`` — :class:`StreamTransport`: anyio byte streams, for trio (and asyncio on request);
- ``memory`` — :class:`MemoryTransport`: ``memory://NAME``, in-process, for tests.

:class:`TransportSelector` picks one per endpoint, from its scheme and the
``transport`` option, once per server or client. A new transport is a new
module and a line in :data:`BY_SCHEME` or :meth:`TransportSelector.__init__`.
"""

from __future__ import annotations

import sniffio

from ..endpoints import Endpoint
from ..options import TransportChoice
from ._asyncio import ProtocolTransport
from ._stream import StreamTransport
from .base import Transport
from .memory import MemoryTransport

__all__ = ("BY_SCHEME", "MemoryTransport", "ProtocolTransport", "StreamTransport", "Transport", "TransportSelector")

#: Transports chosen by their endpoint's scheme alone.
BY_SCHEME: dict[str, Transport] = {"memory": MemoryTransport()}


class TransportSelector:
    """The transport for each endpoint: by scheme, else (TCP and Unix sockets) by the ``transport`` option.

    Made where the event loop runs: ``"auto"`` means asyncio Protocols on
    asyncio and anyio streams elsewhere.
    """

    def __init__(self, choice: TransportChoice) -> None:
        asyncio_loop = sniffio.current_async_library() == "asyncio"
        if choice == "protocol" and not asyncio_loop:
            raise RuntimeError('transport="protocol" needs asyncio')
        self.sockets: Transport = ProtocolTransport() if asyncio_loop and choice != "stream" else StreamTransport()

    def for_endpoint(self, endpoint: Endpoint) -> Transport:
        return BY_SCHEME.get(endpoint.scheme, self.sockets)
