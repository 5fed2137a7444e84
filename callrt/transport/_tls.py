"""TLS on the asyncio shell: a buffered front for the shell's protocols on the loop's SSL transport.

asyncio's and uvloop's SSL transports hand a plain ``asyncio.Protocol`` its
bytes through ``SSLObject.read(256 KiB)``: a fresh 256 KiB buffer for each
read, shrunk to what arrived, which for small calls costs more than the
decryption (measured: p50 ×2.7 over plaintext, bench/README.md, TLS). A
``BufferedProtocol`` is read into instead. :class:`BufferedFront` is one,
put in front of a shell protocol when TLS is on: the SSL transport decrypts
into one buffer per thread, and the front passes what arrived to the
protocol's ``data_received``. Sharing the buffer is safe: the transport calls
``get_buffer`` and ``buffer_updated`` back to back, without running anything
else in between, and the bytes are copied out before ``buffer_updated``
returns. Plaintext connections do not use it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ("BufferedFront",)

_MIN_BUFFER = 64 * 1024  # four full TLS records


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.buffer = bytearray(_MIN_BUFFER)
        self.view = memoryview(self.buffer)


_buffers = _Buffers()


class BufferedFront(asyncio.BufferedProtocol):
    """Presents ``protocol`` (a plain ``asyncio.Protocol``) to an SSL transport as a ``BufferedProtocol``."""

    __slots__ = ("data_received", "protocol")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.data_received = protocol.data_received

    def get_buffer(self, sizehint: int) -> memoryview:
        buffers = _buffers
        if sizehint > len(buffers.buffer):
            buffers.buffer = bytearray(sizehint)
            buffers.view = memoryview(buffers.buffer)
        return buffers.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_buffers.view[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def eof_received(self) -> bool | None:
        eof_received = getattr(self.protocol, "eof_received", None)
        return None if eof_received is None else eof_received()

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()
