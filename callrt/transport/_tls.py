"""TLS on the asyncio shell: connections driven through ``ssl.SSLSocket`` objects on the loop's readiness callbacks.

The loops' own SSL transports (asyncio's and uvloop's SSL protocol) push each
TLS record through a pair of ``MemoryBIO`` objects and Python-level calls on
both sides of it, and end every read with an ``SSLWantReadError`` (raising one
costs about 1.2 µs, twice that through ``ssl.py``). With four records per call
(request and reply, each encrypted and decrypted) callrt's sequential latency
over TLS was twice its plaintext one (bench/README.md, TLS). Here OpenSSL
reads and writes the socket itself (its socket BIO): a readable socket is one
C call that reads a record (its header and its body) and decrypts it into one
buffer per thread, a write one C call that encrypts and sends. A read stops
without an exception when it got less than a full record and OpenSSL holds
nothing more: the loop's readiness is level-triggered, so a next record still
in the socket wakes it again.

- :class:`TLSSocketTransport` is an ``asyncio.Transport`` over a handshaken,
  non-blocking ``SSLSocket``: the shell's protocols run on it unchanged
  (``data_received``, flow control through ``pause_writing``/``resume_writing``,
  ``pause_reading``, ``close`` after a flush, ``abort``).
- :func:`connect_tls` connects, runs the handshake on readiness and returns
  the transport; :class:`TLSListener` accepts on a listening socket itself (so no
  byte of a handshake is read by anything but OpenSSL), closes at once a
  connection over ``max_connections`` (handshakes in progress included), and
  counts each handshake until it is done or ``handshake_timeout`` ends it.

TLS 1.3 sends messages after the handshake (session tickets, key updates): a
read may then have to write and a write to read, and either waits for the
other readiness. A peer's ``close_notify`` or a bare TCP end is an EOF (callrt's
frames are length-prefixed, so a truncation is seen without TLS's closing
handshake); closing sends our ``close_notify`` and does not wait for the peer's.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..connection.server import Server
from ..endpoints import Endpoint

__all__ = ("TLSListener", "TLSSocketTransport", "connect_tls", "open_socket", "run_handshake")

_log = logging.getLogger("callrt.server")

_RECORD = 16384  # the most plaintext one TLS record carries: a read that got this much may have more behind it
_BUFFER = 64 * 1024
_RECORDS_PER_WAKEUP = 16  # 256 KiB of full records, as much as the loops read from a socket at once

# Closing waits this long for what is still to be written (a peer that does not read), then aborts:
# as long as the loops' SSL transports wait for theirs (their ssl_shutdown_timeout).
_CLOSE_FLUSH_TIMEOUT = 30.0

# Accept errors that mean the process or the system is out of a resource: accepting pauses for a while.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_PAUSE = 1.0
_ACCEPTS_PER_WAKEUP = 64


class _Buffers(threading.local):
    """The decryption buffer: one per thread (a read's bytes are copied out before the next read)."""

    def __init__(self) -> None:
        self.buffer = bytearray(_BUFFER)
        self.view = memoryview(self.buffer)


_buffers = _Buffers()


def _ssl_calls(sock: ssl.SSLSocket) -> Any:
    """What reads, writes and reports pending bytes: the ``_ssl._SSLSocket`` under ``sock`` when there is one.

    ``SSLSocket.read``/``write``/``pending`` are Python methods that check state
    and call the same methods of that C object; calling it directly saves four
    Python frames per call (two records each way), about 0.4 µs each, and a
    read that ends in ``SSLWantReadError`` is not caught and raised again.
    ``_sslobj`` is CPython's (3.7 and later); without it the public methods do
    the same work (a bare TCP end is then an empty read instead of ``SSLEOFError``:
    both are an EOF here).
    """
    inner = getattr(sock, "_sslobj", None)
    if inner is not None and all(hasattr(inner, name) for name in ("read", "write", "pending")):
        return inner
    return sock


class TLSSocketTransport(asyncio.Transport):
    """An ``asyncio.Transport`` over a handshaken, non-blocking ``ssl.SSLSocket`` (see the module's docstring).

    Writes go to the socket at once; what it cannot take yet waits, in order,
    and is written when the socket is writable (a write OpenSSL started is
    repeated with the same buffer, as it requires). Above the high-water mark
    the protocol is paused, below the low-water mark resumed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        calls = _ssl_calls(sock)
        self._read = calls.read
        self._write = calls.write
        self._pending = calls.pending
        self._protocol: Any = protocol
        self._buffer: collections.deque[Any] = collections.deque()  # bytes-like, unwritten
        self._buffer_size = 0
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._protocol_paused = False
        self._reading_paused = False
        self._closing = False  # close() or abort() was called, or the connection failed
        self._closed = False  # the socket is closed
        self._read_ready_cb = self._read_ready
        self._on_readable_cb = self._on_readable
        self._reader: Callable[[], None] | None = None  # the callback registered for readability
        self._writer = False  # registered for writability
        self._read_wants_write = False  # a read needs the socket writable first (OpenSSL writes in a read)
        self._write_wants_read = False  # a write needs the socket readable first
        self._close_timer: asyncio.TimerHandle | None = None
        try:
            self._peername = sock.getpeername()
        except OSError:
            self._peername = None
        try:
            self._sockname = sock.getsockname()
        except OSError:
            self._sockname = None
        protocol.connection_made(self)
        if not self._closing:
            self._update_interest()
            if self._pending():  # decrypted already (with the handshake's last records)
                loop.call_soon(self._read_ready)

    # -- asyncio.BaseTransport ----------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sock = self._sock
        try:
            if name == "peercert":
                return sock.getpeercert()
            if name in ("socket", "ssl_object"):
                return sock
            if name == "sslcontext":
                return sock.context
            if name == "cipher":
                return sock.cipher()
            if name == "compression":
                return sock.compression()
        except (OSError, ValueError):  # closed
            return default
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._sockname
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; once what is buffered is written, send ``close_notify`` and close the socket."""
        if self._closing:
            return
        self._closing = True
        self._reading_paused = True
        self._update_interest()
        if self._buffer:
            self._close_timer = self._loop.call_later(_CLOSE_FLUSH_TIMEOUT, self.abort)
        else:
            self._loop.call_soon(self._shutdown)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    # -- asyncio.ReadTransport --------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._reading_paused:
            return
        self._reading_paused = True
        self._update_interest()

    def resume_reading(self) -> None:
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        self._update_interest()
        if self._pending():  # decrypted before the pause and never handed on: no readiness will say so
            self._loop.call_soon(self._read_ready)

    # -- asyncio.WriteTransport -----------------------------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_high()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        return self._buffer_size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if self._buffer:
            self._buffer.append(data)
            self._buffer_size += len(data)
            self._check_high()
            return
        try:
            self._write(data)
        except ssl.SSLWantWriteError:
            self._hold(data)
        except ssl.SSLWantReadError:
            self._write_wants_read = True
            self._hold(data)
        except OSError as exc:
            self._fatal(self._write_failure(exc))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:  # each its own SSL_write: large buffers are not copied into one
            self.write(data)

    def write_eof(self) -> None:
        raise NotImplementedError("TLS does not half-close")

    def can_write_eof(self) -> bool:
        return False

    def abort(self) -> None:
        """Close the socket now, without ``close_notify``; what is buffered is dropped."""
        self._force_close(None)

    # -- readiness ------------------------------------------------------------------------------

    def _update_interest(self) -> None:
        """Register with the loop for what the connection waits for, and only that (readiness is level-triggered).

        A readable socket calls :meth:`_read_ready` itself, one Python call less per record,
        unless a write waits for it (:meth:`_on_readable`).
        """
        if self._closed:
            return
        loop, fd = self._loop, self._fd
        want_read = (not self._reading_paused and not self._read_wants_write) or self._write_wants_read
        reader = None if not want_read else self._on_readable_cb if self._write_wants_read else self._read_ready_cb
        if reader is not self._reader:
            if reader is None:
                loop.remove_reader(fd)
            else:
                loop.add_reader(fd, reader)  # (replaces the other callback)
            self._reader = reader
        want_write = (bool(self._buffer) and not self._write_wants_read) or self._read_wants_write
        if want_write != self._writer:
            self._writer = want_write
            if want_write:
                loop.add_writer(fd, self._on_writable)
            else:
                loop.remove_writer(fd)

    def _on_readable(self) -> None:
        self._write_wants_read = False
        self._write_buffered()
        self._update_interest()
        if not (self._closed or self._reading_paused or self._read_wants_write):
            self._read_ready()

    def _on_writable(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            self._update_interest()
            self._read_ready()
            if self._closed:
                return
        if self._buffer and not self._write_wants_read:
            self._write_buffered()

    def _read_ready(self) -> None:
        if self._closing or self._reading_paused:
            return
        buffers = _buffers
        buffer, view = buffers.buffer, buffers.view
        read, pending, protocol = self._read, self._pending, self._protocol
        for _ in range(_RECORDS_PER_WAKEUP):  # then the other connections' turn: readiness brings us back
            try:
                n = read(_BUFFER, buffer)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self._update_interest()
                return
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if not n:
                self._eof()
                return
            try:
                protocol.data_received(bytes(view[:n]))
            except Exception as exc:
                self._fatal(exc, "protocol.data_received() failed")
                return
            if self._closing or self._reading_paused:
                return
            if n < _RECORD and not pending():
                return  # the socket's readiness says whether more came
        if pending():  # decrypted and not handed on: no readiness will say so
            self._loop.call_soon(self._read_ready)

    def _write_buffered(self) -> None:
        buffer = self._buffer
        while buffer:
            data = buffer[0]
            try:
                self._write(data)  # a write OpenSSL left part-way is repeated with the same buffer
            except ssl.SSLWantWriteError:
                self._update_interest()
                return
            except ssl.SSLWantReadError:
                self._write_wants_read = True
                self._update_interest()
                return
            except OSError as exc:
                self._fatal(self._write_failure(exc))
                return
            buffer.popleft()
            self._buffer_size -= len(data)
        self._update_interest()
        if self._protocol_paused and self._buffer_size <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception as exc:
                self._fatal(exc, "protocol.resume_writing() failed")
                return
        if self._closing and not self._buffer:
            self._shutdown()

    def _hold(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer.append(data)
        self._buffer_size += len(data)
        self._update_interest()
        self._check_high()

    def _check_high(self) -> None:
        if not self._protocol_paused and self._buffer_size > self._high:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except Exception as exc:
                self._fatal(exc, "protocol.pause_writing() failed")

    # -- endings --------------------------------------------------------------------------------

    def _write_failure(self, exc: OSError) -> OSError:
        """Why a write failed: the alert the peer sent before it closed, when one is still to be read.

        A TLS 1.3 server checks the client's certificate after the client's side of the handshake
        is done, then sends an alert and closes; the client's first write can fail on the closed
        connection before anything read the alert that says why (a certificate it requires).
        """
        try:
            self._read(_BUFFER, _buffers.buffer)
        except ssl.SSLError as alert:
            if alert.reason and not isinstance(alert, (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLEOFError)):
                return alert
        except (OSError, ValueError):
            pass
        return exc

    def _eof(self) -> None:
        """The peer's ``close_notify``, or the end of its TCP stream: TLS cannot stay half-open, so we close."""
        try:
            if self._protocol.eof_received():
                _log.debug("eof_received() returned true: TLS cannot half-close, closing")
        except Exception as exc:
            self._fatal(exc, "protocol.eof_received() failed")
            return
        self.close()

    def _shutdown(self) -> None:
        """Send ``close_notify`` (not waiting for the peer's), close the socket, tell the protocol."""
        if self._closed:
            return
        try:
            self._sock.unwrap()  # the first SSL_shutdown sends it; the second, awaiting the peer's, would block
        except (OSError, ValueError):
            pass  # SSLWantReadError (the peer's is not here), or the connection is already broken
        self._force_close(None)

    def _fatal(self, exc: BaseException, what: str | None = None) -> None:
        if what is not None:
            self._loop.call_exception_handler(
                {"message": f"TLS transport: {what}", "exception": exc, "transport": self, "protocol": self._protocol}
            )
        else:
            _log.debug("TLS connection with %s failed: %r", self._peername, exc)
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        self._closing = True
        if self._closed:
            return
        self._closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._reader is not None:
            self._loop.remove_reader(self._fd)
        if self._writer:
            self._loop.remove_writer(self._fd)
        self._reader = None
        self._writer = False
        self._buffer.clear()
        self._buffer_size = 0
        try:
            self._sock.close()
        except OSError:
            pass
        self._loop.call_soon(self._protocol.connection_lost, exc)


# -- handshakes -------------------------------------------------------------------------------------


async def run_handshake(loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket) -> None:
    """Run ``sock``'s TLS handshake to its end, waiting for readiness whenever OpenSSL asks for it."""
    fd = sock.fileno()
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            add, remove = loop.add_reader, loop.remove_reader
        except ssl.SSLWantWriteError:
            add, remove = loop.add_writer, loop.remove_writer
        ready = loop.create_future()
        add(fd, _set_done, ready)
        try:
            await ready
        finally:
            remove(fd)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def open_socket(loop: asyncio.AbstractEventLoop, endpoint: Endpoint) -> socket.socket:
    """A connected, non-blocking socket to ``endpoint`` (TCP: each address of its host in turn, as the loop's own connect)."""
    if endpoint.scheme != "tcp":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, endpoint.address)
        except BaseException:
            sock.close()
            raise
        return sock
    infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if not errors:
        raise OSError(f"{endpoint.host} resolved to no address")
    if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")


async def connect_tls(
    endpoint: Endpoint, context: ssl.SSLContext, server_name: str, make: Callable[[], asyncio.BaseProtocol]
) -> TLSSocketTransport:
    """Connect to ``endpoint``, run the TLS handshake and start ``make()``'s protocol on the connection.

    Unbounded: the caller bounds it (``connect_errors``). Raises what connecting and the handshake raise.
    """
    loop = asyncio.get_running_loop()
    sock = await open_socket(loop, endpoint)
    try:
        tls = context.wrap_socket(sock, server_side=False, server_hostname=server_name, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:
        await run_handshake(loop, tls)
    except BaseException:
        tls.close()
        raise
    return TLSSocketTransport(loop, tls, make())


# -- the server's side ------------------------------------------------------------------------------


class TLSListener:
    """Accepts TLS connections on a listening socket for ``server``; each gets ``make()``'s protocol once handshaken.

    Closing it stops accepting and ends the handshakes still in progress (they
    are not connections yet: a client sees its connection close and tries
    again); connections already made stay, for the server's drain.
    """

    def __init__(self, sock: socket.socket, server: Server, context: ssl.SSLContext, make: Callable[[], Any]) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.server = server
        self.context = context
        self.make = make
        self.tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self.handshakes: set[asyncio.Task[None]] = set()
        self.closed = False
        self._resume: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; cancel the handshakes in progress. The listening socket is its owner's to close."""
        if self.closed:
            return
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
        for task in self.handshakes:
            task.cancel()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    _log.warning("accepting connections paused for %ss: %s", _ACCEPT_PAUSE, exc)
                    self.loop.remove_reader(self.sock.fileno())
                    self._resume = self.loop.call_later(_ACCEPT_PAUSE, self._resume_accepting)
                    return
                continue  # the connection failed before we took it (ECONNABORTED): the next one
            self._accepted(conn)

    def _resume_accepting(self) -> None:
        self._resume = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accepted(self, conn: socket.socket) -> None:
        server = self.server
        if server.full():  # at max_connections, handshakes included: no TLS work for one over it
            _log.debug("closed a connection from %s before TLS: at max_connections", _peer(conn))
            conn.close()
            return
        server.handshaking += 1  # counted from accept, so half-open handshakes cannot pass the cap
        task = self.loop.create_task(self._handshake(conn))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        tls: ssl.SSLSocket | None = None
        try:
            conn.setblocking(False)
            if self.tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            async with asyncio.timeout(self.server.options.handshake_timeout):
                await run_handshake(self.loop, tls)
        except Exception as exc:  # a plaintext client, a refused certificate, a timeout, a reset
            _log.debug("TLS handshake with %s failed: %r", _peer(conn if tls is None else tls), exc)
            (conn if tls is None else tls).close()
            return
        except BaseException:  # cancelled: the listener is closing
            (conn if tls is None else tls).close()
            raise
        finally:
            self.server.handshaking -= 1
        try:
            TLSSocketTransport(self.loop, tls, self.make())
        except Exception:
            _log.exception("serving a connection from %s failed", _peer(tls))
            tls.close()


def _peer(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername() or "a Unix socket peer")
    except OSError:
        return "a peer"
