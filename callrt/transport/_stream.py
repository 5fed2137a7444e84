"""The portable shell: anyio byte streams, for trio (and asyncio when asked for), and the in-memory transport.

Each connection has a reader task and a writer task. The server's reader
feeds the sans-IO decoder and runs handlers inline; when an async handler
blocks, it starts a new reader task and retires once its handler is done.
The writer sends everything written since it last ran in one ``send``, so
frames ready together leave together.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.streams.tls import TLSAttribute, TLSStream

from .._writes import frame_buffers, joined
from ..connection.client import ClientSession
from ..connection.server import ConnectionWatchdog, Server, ServerConnection
from ..context import Peer
from ..endpoints import Endpoint
from ..errors import CommunicationError, DeadlineExceeded, RemoteError, RemoteProtocolError
from ..handlers import RegisteredHandler
from ..options import ClientOptions
from ..protocol import FrameDecoder, Hello, Request
from .base import (
    BROKEN,
    Transport,
    UnixSocketFile,
    bind_tcp,
    bind_unix,
    client_hello,
    connect_errors,
    handshake,
    socket_peer,
    tls_server_name,
)

__all__ = ("StreamTransport", "client_over", "serve_stream")

_CLOSE_FLUSH_TIMEOUT = 1.0


# Above this many bytes written but not yet sent (a peer that does not read), the server stops
# reading that connection until they are down to a quarter of it: as the asyncio shell's
# transport pauses its writer at the same mark.
_WRITE_BUFFER_HIGH = 1024 * 1024


class _Writer:
    """Coalesces writes: ``write`` is sync; one task sends whatever has accumulated."""

    def __init__(self, stream: ByteStream, flatten_limit: int) -> None:
        self.stream = stream
        self.flatten_limit = flatten_limit
        self.on_sent: Callable[[], None] | None = None  # the client's: what it held back is sent
        self.out: list[bytes] = []
        self.queued = 0  # bytes written and not yet sent
        self.wake = anyio.Event()
        self._drained: anyio.Event | None = None
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.queued += len(data)
        self.wake.set()

    async def drained(self) -> None:
        """Return once the bytes not yet sent are below the high-water mark."""
        while self.queued > _WRITE_BUFFER_HIGH:
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()

    def finish(self) -> None:
        """Send what is queued, then make :meth:`run` return."""
        self.closing = True
        self.wake.set()

    async def run(self) -> None:
        """Send until the stream breaks (raises) or :meth:`finish` was called and all is sent (returns)."""
        while True:
            if self.closing and not self.out:
                return
            await self.wake.wait()
            self.wake = anyio.Event()
            out, self.out = self.out, []
            if not out:
                continue
            if self.on_sent is not None:
                self.on_sent()
            data = joined(out, self.flatten_limit)
            for buffer in out if data is None else (data,):
                await self.stream.send(buffer)
                self.queued -= len(buffer)
            if self._drained is not None and self.queued <= _WRITE_BUFFER_HIGH // 4:
                self._drained.set()
                self._drained = None


# -- server ------------------------------------------------------------------


class StreamServerShell:
    """The I/O of one accepted connection on a byte stream (the :class:`ServerIO` of its connection)."""

    def __init__(self, server: Server, stream: ByteStream, tg: TaskGroup) -> None:
        self.writer = _Writer(stream, server.options.write_flatten_limit)
        self.write = self.writer.write
        self.conn = ServerConnection(server, self)
        self.stream = stream
        self.tg = tg
        # Readers start from this context, never from the context of the handler that
        # handed off to them (its trace context, say).
        self.context = contextvars.copy_context()
        self.decoder = FrameDecoder(server.options.max_frame_size, expect="hello")
        self.reader: object | None = None
        self.scopes: dict[int, tuple[anyio.CancelScope, list[RemoteError]]] = {}
        self.task_per_call = server.options.inline_handler_duration < 0
        self.inline: tuple[Request, RegisteredHandler, float | None] | None = None
        self.server = server
        self.max_calls = server.options.max_calls_per_connection
        self.frames_per_turn = server.options.frames_per_turn
        self._call_done: anyio.Event | None = None  # set when a call ends, for a reader held at the cap
        self.watchdog = ConnectionWatchdog(self.conn, self.decoder, anyio.current_time, lambda: bool(self.scopes))

    def close(self) -> None:
        """End the connection. Replies already written (the last ones of a drain, say) are
        sent first, for at most ``_CLOSE_FLUSH_TIMEOUT`` seconds if the peer does not read."""
        if self.conn.closed:
            return
        self.conn.closed = True
        self.writer.finish()  # _write_until_broken cancels the connection once all is sent
        self.tg.start_soon(self._close_after, _CLOSE_FLUSH_TIMEOUT)

    async def _close_after(self, delay: float) -> None:
        await anyio.sleep(delay)
        self.tg.cancel_scope.cancel()

    def run_async(self, request: Request, entry: RegisteredHandler, deadline: float | None) -> None:
        if request.id in self.scopes:
            raise RemoteProtocolError(f"request id {request.id} reused while its call is in flight")
        # The scope exists from now on, so a cancel that arrives before the handler starts is kept.
        self.scopes[request.id] = (anyio.CancelScope(deadline=math.inf if deadline is None else deadline), [])
        self.server.calls += 1
        if self.task_per_call:
            self.tg.start_soon(self.run_handler, request, entry, deadline, _no_hook)
        else:
            self.inline = (request, entry, deadline)  # the reader runs it as soon as this returns

    def run_plain(self, request: Request, entry: RegisteredHandler) -> None:
        self.run_async(request, entry, None)

    async def run_handler(
        self, request: Request, entry: RegisteredHandler, deadline: float | None, on_block: Callable[[], None]
    ) -> None:
        scope, reasons = self.scopes[request.id]
        try:
            with scope:
                if reasons:  # cancelled before it started
                    await anyio.lowlevel.checkpoint()
                await self.conn.call_async(request, entry, deadline, on_block)
        finally:
            del self.scopes[request.id]
            self.server.call_finished()
            if self._call_done is not None:
                self._call_done.set()
                self._call_done = None
        if scope.cancelled_caught:
            self.conn.fail(request.id, reasons[0] if reasons else DeadlineExceeded(f"{entry.name}: deadline exceeded"))

    def cancel_running(self, request_id: int, reason: RemoteError) -> None:
        entry = self.scopes.get(request_id)
        if entry is not None:
            entry[1].append(reason)
            entry[0].cancel()

    def hand_off(self) -> None:
        self.conn.left_the_loop()
        self.reader = None
        self.context.run(self.tg.start_soon, self.read)

    async def read(self) -> None:
        """A reader, with inline execution: async handlers run here until they block.

        When one blocks, :meth:`hand_off` starts the next reader and this one
        retires after its handler. The reader that meets the end of the
        stream or a protocol error closes the connection.
        """
        me = object()
        self.reader = me
        decoder, conn, watchdog = self.decoder, self.conn, self.watchdog
        conn.start_reading()  # in this task's own context, for as long as it reads
        turn = self.frames_per_turn
        server, scopes, max_calls = self.server, self.scopes, self.max_calls
        try:
            while True:
                while True:
                    if len(scopes) >= max_calls or server.calls >= server.options.max_calls:
                        await self._below_call_caps()
                    if (frame := decoder.next_frame()) is None:
                        break
                    watchdog.frames += 1
                    if type(frame) is Hello:
                        conn.hello_received(frame)
                        continue
                    conn.frame_received(frame)
                    if self.inline is not None:
                        request, entry, deadline = self.inline
                        self.inline = None
                        await self.run_handler(request, entry, deadline, self.hand_off)
                        if self.reader is not me:
                            return  # a new reader took over while this handler was blocked
                    turn -= 1
                    if not turn:  # other connections get a turn
                        turn = self.frames_per_turn
                        await anyio.lowlevel.checkpoint()
                # Replies the peer does not read stop this reader before more requests are read.
                if self.writer.queued > _WRITE_BUFFER_HIGH:
                    watchdog.holding = True
                    await self.writer.drained()
                    watchdog.holding = False
                decoder.receive_data(await self.stream.receive())
                watchdog.heard = True
                if (decoder.partial_body_bytes or watchdog.partial) and watchdog.account_partial():
                    break
        except RemoteProtocolError as exc:
            conn.protocol_error(exc)
        except BROKEN:
            pass
        self.close()  # this connection ends; the server goes on

    async def _below_call_caps(self) -> None:
        """Wait while this connection's or the server's calls in flight are at their cap."""
        server = self.server
        self.watchdog.holding = True
        try:
            while len(self.scopes) >= self.max_calls or server.calls >= server.options.max_calls:
                done = self._call_done = self._call_done or anyio.Event()
                if server.calls >= server.options.max_calls:
                    server.waiting_for_calls.add(done.set)
                await done.wait()
        finally:
            self.watchdog.holding = False

    async def watch(self) -> None:
        """The connection's timers (handshake, idle, body; see ConnectionWatchdog), on one task."""
        await anyio.sleep(self.server.options.handshake_timeout)
        while not self.watchdog.expired():  # noqa: ASYNC110  # a periodic tick, not a wait for an event
            await anyio.sleep(self.watchdog.interval)
        self.close()

    async def write_until_broken(self) -> None:
        try:
            await self.writer.run()
        except BROKEN:
            pass
        self.conn.closed = True
        self.tg.cancel_scope.cancel()


def _no_hook() -> None:
    pass


# How long a close waits for the peer's answer to its TLS close_notify.
_CLOSE_NOTIFY_WAIT = 1.0


async def send_close_notify(stream: TLSStream) -> None:
    """Our close_notify, which strict TLS peers expect of either side's close.

    anyio sends it only in a closing handshake that then waits for the peer's; a
    peer that neither answers nor closes holds the close for a bounded while only.
    A stream already broken (the peer reset it, say) fails at once.
    """
    with anyio.move_on_after(_CLOSE_NOTIFY_WAIT):
        try:
            await stream.unwrap()
        except BROKEN:  # the peer closed without answering: it has ours, or cannot have it
            pass


async def serve_stream(server: Server, stream: ByteStream, peer: Peer | None = None) -> None:
    """Serve one accepted connection on ``stream`` until it ends; ``peer`` when the stream cannot tell."""
    async with stream:
        async with anyio.create_task_group() as tg:
            shell = StreamServerShell(server, stream, tg)
            shell.conn.peer = peer or _stream_peer(stream)
            if not shell.conn.refuse_busy:
                server.connection_opened(shell.conn)
            tg.start_soon(shell.write_until_broken)
            tg.start_soon(shell.watch)
            tg.start_soon(shell.read)
        shell.conn.closed = True
        shell.watchdog.release()
        server.connection_closed(shell.conn)
        if isinstance(stream, TLSStream):
            await send_close_notify(stream)


async def serve_tls_stream(server: Server, stream: ByteStream) -> None:
    """Serve one accepted connection over TLS (``ServerOptions.tls``): the TLS handshake, then :func:`serve_stream`.

    The handshake runs in the connection's own task, bounded by ``handshake_timeout``; one that
    fails (a plaintext client, a certificate the context refuses) ends this connection only. It
    counts in ``max_connections`` from accept; over the cap the connection is closed before any
    TLS work (a refusal in the hello would need the handshake first).
    """
    assert server.options.tls is not None
    if server.full():  # at max_connections, handshakes included: no TLS work for one over it
        _log.debug("closed a connection from %s before TLS: at max_connections", _stream_peer(stream).address)
        await anyio.aclose_forcefully(stream)
        return
    server.handshaking += 1  # counted from accept, so half-open handshakes cannot pass the cap
    try:
        with anyio.fail_after(server.options.handshake_timeout):
            # Not standard_compatible: callrt's frames are length-prefixed, so a truncation is
            # seen without TLS's closing handshake; closing sends close_notify (serve_stream) but
            # waits for the peer's a bounded while only.
            tls = await TLSStream.wrap(
                stream, server_side=True, ssl_context=server.options.tls, standard_compatible=False
            )
    except (TimeoutError, *BROKEN) as exc:
        _log.debug("TLS handshake with %s failed: %r", _stream_peer(stream).address, exc)
        await anyio.aclose_forcefully(stream)
        return
    finally:
        server.handshaking -= 1
    await serve_stream(server, tls)


_log = logging.getLogger("callrt.server")


def _stream_peer(stream: ByteStream) -> Peer:
    sock = stream.extra(SocketAttribute.raw_socket, None)
    peername = stream.extra(SocketAttribute.remote_address, None)
    cert = stream.extra(TLSAttribute.peer_certificate, None)
    return socket_peer(sock, peername, cert)


# -- client ------------------------------------------------------------------


class StreamClientShell:
    """The I/O of one client connection on a byte stream (the :class:`ClientIO` of its session)."""

    def __init__(self, endpoint: Endpoint, options: ClientOptions, stream: ByteStream) -> None:
        self.writer = _Writer(stream, options.write_flatten_limit)
        self.write = self.writer.write
        self.session = session = ClientSession(endpoint, options, self)
        self.writer.on_sent = session.mark_sent
        self.stream = stream
        self.decoder = FrameDecoder(options.max_frame_size, expect="hello_reply")
        self.cancel_scope = anyio.CancelScope()
        self.closed_by_client = False

    def send(self, request_id: int, header: bytes, payload: bytes) -> None:
        for buffer in frame_buffers(header, payload, self.session.flatten_limit):
            self.writer.write(buffer)

    def abort(self, error: BaseException) -> None:
        self.session.connection_lost(error)
        self.cancel_scope.cancel()

    def close(self) -> None:
        """The client is done with the connection: its calls fail, and the stream ends cleanly."""
        self.closed_by_client = True
        self.abort(CommunicationError("connection closed by the client"))

    async def run(self) -> None:
        session = self.session
        try:
            with self.cancel_scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._write_loop)
                    try:
                        decoder = self.decoder
                        while True:
                            data = await self.stream.receive()
                            session.last_received = anyio.current_time()
                            decoder.receive_data(data)
                            frames = decoder.frames()
                            while frames:
                                for frame in frames:
                                    session.frame_received(frame)
                                frames = decoder.frames() if decoder.more else []
                    except (*BROKEN, RemoteProtocolError) as exc:
                        session.connection_lost(exc)
                    finally:
                        session.connection_lost(None)
                        tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_stream()

    async def _close_stream(self) -> None:
        stream = self.stream
        if self.closed_by_client and isinstance(stream, TLSStream):
            await send_close_notify(stream)
        await stream.aclose()

    async def _write_loop(self) -> None:
        try:
            await self.writer.run()
        except BROKEN as exc:
            self.abort(exc)


@asynccontextmanager
async def client_over(stream: ByteStream, endpoint: Endpoint, options: ClientOptions) -> AsyncIterator[ClientSession]:
    """A handshaken session over a connected ``stream``; closed on exit."""
    shell = StreamClientShell(endpoint, options, stream)
    session = shell.session
    # A failed handshake is raised after the task group has closed: raised inside it, it
    # would reach the caller wrapped in an exception group instead of as itself.
    failure: CommunicationError | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(shell.run)
        shell.write(client_hello(options))
        try:
            await handshake(session, endpoint, options)
        except CommunicationError as exc:
            failure = exc  # the session is aborted already
        else:
            try:
                yield session
            finally:
                shell.close()
    if failure is not None:
        raise failure


class StreamTransport(Transport):
    """TCP and Unix sockets through anyio's byte streams: trio's path, and asyncio's when asked for."""

    @asynccontextmanager
    async def listen(self, endpoint: Endpoint, server: Server, conn_tg: TaskGroup) -> AsyncIterator[Endpoint]:
        file: UnixSocketFile | None = None  # a Unix socket's, removed when we stop listening
        listener: Any
        if endpoint.scheme == "tcp":
            listener, bound = await bind_tcp(endpoint, server.options)
        else:
            # Bound by callrt, not by anyio, which would take over a path another server listens on.
            sock, file = bind_unix(endpoint, server.options.backlog)
            try:
                listener = await anyio.abc.SocketListener.from_socket(sock)
            except BaseException:
                sock.close()
                file.remove()
                raise
            bound = endpoint

        serve_one = serve_stream if server.options.tls is None else serve_tls_stream
        async with anyio.create_task_group() as accept_tg:
            # Accepted connections live in ``conn_tg``, so they outlive the listener for the drain.
            accept_tg.start_soon(listener.serve, functools.partial(serve_one, server), conn_tg)
            try:
                yield bound
            finally:
                accept_tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await listener.aclose()
        if file is not None:
            file.remove()

    @asynccontextmanager
    async def connect(self, endpoint: Endpoint, options: ClientOptions) -> AsyncIterator[ClientSession]:
        with connect_errors(endpoint, options):
            if endpoint.scheme == "tcp":
                stream: ByteStream = await anyio.connect_tcp(endpoint.host, endpoint.port)
            else:
                stream = await anyio.connect_unix(endpoint.address)
            if options.tls is not None:
                try:
                    stream = await TLSStream.wrap(
                        stream,
                        server_side=False,
                        hostname=tls_server_name(endpoint, options),
                        ssl_context=options.tls,
                        standard_compatible=False,
                    )
                except BaseException:
                    await anyio.aclose_forcefully(stream)
                    raise
        async with client_over(stream, endpoint, options) as session:
            yield session
