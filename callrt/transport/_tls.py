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

A server does not let the loop do its handshakes (``create_server(ssl=...)``
would start one for every connection it accepts, before any code of ours
runs, and tell nothing of one that fails): :class:`TLSAcceptor` takes each
accepted connection, closes it at once if the server is at
``max_connections`` (handshakes in progress included), else counts it as
handshaking while ``loop.start_tls`` runs the handshake, bounded by
``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast

from ..connection.server import Server

__all__ = ("BufferedFront", "TLSAcceptor")

_log = logging.getLogger("callrt.server")

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


class _LateFront(BufferedFront):
    """A :class:`BufferedFront` whose protocol comes after the handshake.

    ``start_tls`` returns once the handshake is done, but the SSL transport may already have
    passed on what arrived with the handshake's last message (the client's hello), or an
    end: kept here, in order, and handed to the protocol once it is attached.
    """

    __slots__ = ("early",)

    def __init__(self) -> None:
        self.protocol = None
        self.early: list[tuple[str, Any]] = []
        self.data_received = lambda data: self.early.append(("data", data))

    def attach(self, protocol: Any, transport: asyncio.BaseTransport) -> None:
        self.protocol = protocol
        self.data_received = protocol.data_received
        protocol.connection_made(transport)
        early, self.early = self.early, []
        for event, arg in early:
            if event == "data":
                protocol.data_received(arg)
            elif event == "eof":
                self.eof_received()
            else:
                protocol.connection_lost(arg)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.protocol is None:
            self.early.append(("lost", exc))
        else:
            self.protocol.connection_lost(exc)

    def eof_received(self) -> bool | None:
        if self.protocol is None:
            self.early.append(("eof", None))
            return None
        return super().eof_received()


class TLSAcceptor(asyncio.Protocol):
    """An accepted connection of a TLS server until its handshake is done; then ``make()``'s protocol has it."""

    #: Handshakes in progress: the loop keeps only weak references to tasks.
    _handshakes: set[asyncio.Task[None]] = set()  # noqa: RUF012  # one set for the process, on purpose

    def __init__(self, server: Server, context: ssl.SSLContext, make: Callable[[], Any]) -> None:
        self.server = server
        self.context = context
        self.make = make
        self.early: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # (uvloop's is no subclass)
        server = self.server
        if server.full():  # at max_connections, handshakes included: no TLS work for one over it
            _log.debug("closed a connection from %s before TLS: at max_connections", _peer(transport))
            transport.abort()
            return
        # Until start_tls reads the handshake. (uvloop reads once before it lets a pause work:
        # what it read waits in ``early``.)
        transport.pause_reading()
        server.handshaking += 1  # counted from accept, so half-open handshakes cannot pass the cap
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def data_received(self, data: bytes) -> None:
        self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # before start_tls took the connection over

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        front = _LateFront()
        starting: asyncio.Task[asyncio.Transport | None] | None = None
        try:
            if self.lost:
                return
            starting = loop.create_task(
                loop.start_tls(
                    transport,
                    front,
                    self.context,
                    server_side=True,
                    ssl_handshake_timeout=self.server.options.handshake_timeout,
                )
            )
            # One turn: start_tls has put its SSL protocol on the transport (calls made in order
            # run in order), and has not started it yet. Bytes read before are its first.
            await asyncio.sleep(0)
            if self.early:
                ssl_protocol = transport.get_protocol()
                if ssl_protocol is self or not hasattr(ssl_protocol, "buffer_updated"):  # (uvloop's is no subclass)
                    raise ConnectionAbortedError("the TLS handshake's first bytes have nowhere to go")
                _feed(ssl_protocol, b"".join(self.early))
                self.early = []
            tls = await starting
        except Exception as exc:  # a plaintext client, a refused certificate, a timeout, a reset
            _log.debug("TLS handshake with %s failed: %r", _peer(transport), exc)
            transport.abort()
            return
        except BaseException:
            transport.abort()
            raise
        finally:
            self.server.handshaking -= 1
            if starting is not None and not starting.done():
                starting.cancel()
        if tls is None:  # lost as the handshake ended
            transport.abort()
            return
        try:
            front.attach(self.make(), tls)
        except Exception:
            _log.exception("serving a connection from %s failed", _peer(transport))
            tls.abort()


def _feed(protocol: Any, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` as its transport would have."""
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


def _peer(transport: asyncio.BaseTransport) -> str:
    try:
        return str(transport.get_extra_info("peername") or "a Unix socket peer")
    except Exception:  # (uvloop's closed Unix transports raise)
        return "a peer"
