"""A fault-injection proxy for tests: delay, drop, corrupt, stall or reset the bytes between two peers.

:class:`FaultProxy` listens on a TCP port (or a Unix socket), connects each
connection it accepts to ``upstream``, and forwards the bytes both ways, doing
to them what it is told: per direction (``"to_server"``, ``"to_client"`` or
``"both"``), for every connection or for one. It knows nothing of callrt's
protocol, so it serves as well for any other TCP or Unix-socket service. It
runs on anyio: asyncio (uvloop too) and trio. ::

    import anyio
    from callrt import call
    from callrt.testing import FaultProxy, Faults

    def script(conn: ProxyConnection) -> None:               # each new connection, before it goes upstream
        if conn.number == 2:                                   # the second one: its 17th byte to the server inverted
            conn.set_faults(Faults(corrupt_at={16}), "to_server")

    async with FaultProxy("tcp://127.0.0.1:9000") as proxy:     # listens on tcp://127.0.0.1:<free port>
        proxy.on_connect = script
        async with call.connect(call.ConstantResolver([proxy.endpoint])) as conn:
            cart = conn.stub(Cart)
            await cart.total("ann")                              # transparent until told otherwise
            proxy.set_faults(Faults(delay=0.05))                 # 50 ms each way, live and new connections
            proxy.set_faults(Faults(stall=True), "to_client")    # replies stop; the sockets stay open
            (first,) = proxy.connections
            await first.to_client.wait_received(1)               # a reply reached the proxy, and stays there
            proxy.clear_faults()                                 # what was held goes on, in order
            await proxy.reset_all()                              # RST every live connection

What each :class:`Faults` field does to one direction of one connection
(offsets count that direction's bytes from the connection's first byte):

- ``delay``: each chunk is forwarded ``delay`` seconds after it arrived; order is kept.
- ``stall``: nothing is forwarded (bytes are held; when the buffer is full the
  sender's writes block), the sockets stay open; clearing it forwards what was held.
- ``drop_after``: bytes at offsets from ``drop_after`` on are read and discarded
  silently, and so is the sender's EOF. ``drop_after=0``: drop from now on.
- ``corrupt_at`` / ``corrupt_probability``: the bytes at those offsets, or each
  byte with that probability, are inverted (xor 0xFF). The draws come from
  ``rng`` (shared by every direction given the same ``Faults``) or, without one,
  from a ``random.Random(0)`` of the direction's own, so runs repeat.
- ``reset_after``: once the direction reaches that offset (at once if it has), the
  connection is reset; the bytes from that offset on are not forwarded.

:meth:`ProxyConnection.reset` resets one connection: both sockets are closed
with SO_LINGER 0, so each peer gets a TCP RST (a Unix socket has no RST: its
peer sees the socket close). ``proxy.refuse = True`` resets every new
connection as soon as it is accepted (the kernel has already completed the TCP
handshake, so a client's connect succeeds and its first read fails).
Otherwise the proxy passes on what the peers do: an EOF (half-close) is
forwarded after the bytes before it; a peer's RST resets the connection.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, NamedTuple

import anyio
from anyio.abc import ByteStream, Listener, SocketAttribute, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..endpoints import Endpoint

__all__ = ("Direction", "FaultProxy", "Faults", "Pipe", "ProxyConnection")

Direction = Literal["to_server", "to_client", "both"]

_CHUNK = 65536  # largest read
_HELD_CHUNKS = 64  # chunks a direction holds (delayed or stalled) before it stops reading


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """What to do to one direction of a connection. ``Faults()`` forwards everything as it comes."""

    delay: float = 0.0
    stall: bool = False
    drop_after: int | None = None
    reset_after: int | None = None
    corrupt_at: Collection[int] = field(default=frozenset())
    corrupt_probability: float = 0.0
    rng: random.Random | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "corrupt_at", frozenset(self.corrupt_at))
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, not {self.delay}")
        if not 0.0 <= self.corrupt_probability <= 1.0:
            raise ValueError(f"corrupt_probability must be within [0, 1], not {self.corrupt_probability}")
        for name in ("drop_after", "reset_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")
        if any(offset < 0 for offset in self.corrupt_at):
            raise ValueError("corrupt_at offsets must be >= 0")


class _Chunk(NamedTuple):
    offset: int  # of data's first byte in its direction
    data: bytes | None  # None: the sender's EOF
    arrived: float


class Pipe:
    """One direction of a :class:`ProxyConnection`: reads one socket, applies its faults, writes the other.

    :ivar received: bytes read from the sending peer.
    :ivar forwarded: bytes written to the receiving peer.
    :ivar dropped: bytes discarded by ``drop_after`` (or cut off by ``reset_after``).
    :ivar eof: whether the sending peer has closed its side.
    """

    def __init__(self, connection: ProxyConnection, direction: Literal["to_server", "to_client"], faults: Faults):
        self.connection = connection
        self.direction = direction
        self.received = 0
        self.forwarded = 0
        self.dropped = 0
        self.eof = False
        self._faults = faults
        self._rng = faults.rng or random.Random(0)
        self._faults_changed = anyio.Event()
        self._progress = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"<Pipe #{self.connection.number} {self.direction} received={self.received}"
            f" forwarded={self.forwarded} dropped={self.dropped} {self._faults}>"
        )

    @property
    def faults(self) -> Faults:
        """This direction's faults: :meth:`set_faults` replaces them."""
        return self._faults

    @property
    def position(self) -> int:
        """Offset of the next byte to forward or drop: every byte before it has been dealt with."""
        return self.forwarded + self.dropped

    def set_faults(self, faults: Faults) -> None:
        """Replace this direction's faults; bytes already held (delayed, stalled) get the new ones."""
        self._faults = faults
        self._rng = faults.rng or random.Random(0)
        self._faults_changed.set()
        self._faults_changed = anyio.Event()
        if faults.reset_after is not None and self.position >= faults.reset_after:
            self.connection.reset()

    async def wait_received(self, count: int) -> bool:
        """Wait until ``count`` bytes have come from the sending peer: ``True``; ``False`` if it closed first."""
        while self.received < count:
            if self.eof or self.connection.closed:
                return False
            await self._progress.wait()
        return True

    def _advance(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    async def _read(self, source: ByteStream, held: MemoryObjectSendStream[_Chunk]) -> None:
        async with held:
            while True:
                try:
                    data = await source.receive(_CHUNK)
                except anyio.EndOfStream:
                    self.eof = True
                    self._advance()
                    await held.send(_Chunk(self.received, None, anyio.current_time()))
                    return
                except (anyio.BrokenResourceError, OSError):
                    self.connection.reset()  # the peer reset us: pass it on
                    return
                offset = self.received
                self.received += len(data)
                self._advance()
                await held.send(_Chunk(offset, data, anyio.current_time()))

    async def _hold(self, arrived: float) -> None:
        """Return once the chunk that arrived at ``arrived`` may go: not stalled and its delay passed."""
        while True:
            faults, changed = self._faults, self._faults_changed
            if faults.stall:
                await changed.wait()
                continue
            left = arrived + faults.delay - anyio.current_time()
            if left <= 0:
                return
            with anyio.move_on_after(left):
                await changed.wait()

    async def _write(self, held: MemoryObjectReceiveStream[_Chunk], sink: ByteStream) -> None:
        async with held:
            async for chunk in held:
                await self._hold(chunk.arrived)
                faults = self._faults
                if chunk.data is None:
                    if faults.drop_after is None or chunk.offset < faults.drop_after:
                        try:
                            await sink.send_eof()
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, RuntimeError):
                            # RuntimeError: uvloop's transport, already closed by the peer
                            self.connection.reset()
                    continue  # a dropped EOF is swallowed like the bytes before it
                data, reset = self._apply(faults, chunk.offset, chunk.data)
                if data:
                    try:
                        await sink.send(data)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        self.connection.reset()  # the receiver is gone
                        return
                    self.forwarded += len(data)
                if reset:
                    self.connection.reset()
                    return

    def _apply(self, faults: Faults, offset: int, data: bytes) -> tuple[bytes, bool]:
        """What of ``data`` (at ``offset``) goes on, and whether the connection is reset after it."""
        keep = len(data)
        reset_at = faults.reset_after
        reset = reset_at is not None and reset_at <= offset + keep
        if reset_at is not None and reset:
            keep = max(0, reset_at - offset)
        if faults.drop_after is not None:
            keep = min(keep, max(0, faults.drop_after - offset))
        self.dropped += len(data) - keep
        out = bytearray(data[:keep])
        for at in faults.corrupt_at:
            if offset <= at < offset + keep:
                out[at - offset] ^= 0xFF
        if faults.corrupt_probability > 0:
            rng, p = self._rng, faults.corrupt_probability
            for i in range(keep):
                if rng.random() < p:
                    out[i] ^= 0xFF
        return bytes(out), reset


class ProxyConnection:
    """One proxied connection: a client socket, its upstream socket, and a :class:`Pipe` each way.

    :ivar number: 1 for the proxy's first accepted connection, 2 for the next, ...
    """

    def __init__(self, number: int, client: ByteStream, faults: dict[str, Faults]) -> None:
        self.number = number
        self.to_server = Pipe(self, "to_server", faults["to_server"])
        self.to_client = Pipe(self, "to_client", faults["to_client"])
        self.closed = False
        self.was_reset = False
        self._client = client
        self._server: ByteStream | None = None
        self._scope: anyio.CancelScope | None = None
        self._closed_event = anyio.Event()

    def __repr__(self) -> str:
        state = "reset" if self.was_reset else "closed" if self.closed else "open"
        return f"<ProxyConnection #{self.number} {state}>"

    def pipes(self, direction: Direction) -> list[Pipe]:
        if direction == "both":
            return [self.to_server, self.to_client]
        if direction == "to_server":
            return [self.to_server]
        if direction == "to_client":
            return [self.to_client]
        raise ValueError(f"direction must be 'to_server', 'to_client' or 'both', not {direction!r}")

    def set_faults(self, faults: Faults, direction: Direction = "both") -> None:
        """Replace the faults of this connection's ``direction``."""
        for pipe in self.pipes(direction):
            pipe.set_faults(faults)

    def reset(self) -> None:
        """Reset the connection now: both peers get an RST (TCP); bytes held are lost."""
        if self.closed:
            return
        self.was_reset = True
        if self._scope is not None:
            self._scope.cancel()

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def _run(
        self, prepare: Callable[[ProxyConnection], None], connect: Callable[[], Awaitable[ByteStream]]
    ) -> None:
        """Connect upstream, forward both ways until both peers have closed or a reset; close both sockets."""
        queues: tuple[MemoryObjectSendStream[_Chunk] | MemoryObjectReceiveStream[_Chunk], ...] = ()
        try:
            prepare(self)
            with anyio.CancelScope() as self._scope:
                if self.was_reset:
                    return  # reset before it began: upstream never sees it
                try:
                    self._server = await connect()
                except OSError:
                    self.was_reset = True  # upstream refused: so is the client
                    return
                async with anyio.create_task_group() as tg:
                    for pipe, source, sink in (
                        (self.to_server, self._client, self._server),
                        (self.to_client, self._server, self._client),
                    ):
                        send, receive = anyio.create_memory_object_stream[_Chunk](_HELD_CHUNKS)
                        queues += (send, receive)
                        tg.start_soon(pipe._read, source, send)
                        tg.start_soon(pipe._write, receive, sink)
        finally:
            for queue in queues:
                queue.close()  # in case its task never started
            with anyio.CancelScope(shield=True):
                for stream in (self._client, self._server):
                    if stream is not None:
                        await _close(stream, reset=self.was_reset)
            self.closed = True
            self._closed_event.set()
            self.to_server._advance()
            self.to_client._advance()


class FaultProxy:
    """A proxy to ``upstream`` whose faults tests set: ``async with FaultProxy(upstream) as proxy``.

    :param upstream: where connections go: ``"tcp://host:port"`` or ``"unix:///path"``
        (or a callrt Endpoint). May be changed later; new connections follow it.
    :param listen: where the proxy listens; :attr:`endpoint` tells the address bound.
    :param faults: the faults of new connections, both directions (default: none).

    :ivar on_connect: called with each new :class:`ProxyConnection` before it connects
        upstream: set its faults or reset it there to script connections one by one.
    :ivar refuse: while true, every new connection is reset as soon as it is accepted.
    :ivar accepted: connections accepted so far.
    """

    def __init__(
        self, upstream: str | Endpoint, *, listen: str = "tcp://127.0.0.1:0", faults: Faults | None = None
    ) -> None:
        self.upstream = str(upstream)
        _parse(self.upstream)
        self.listen = listen
        _parse(listen)
        self.on_connect: Callable[[ProxyConnection], object] | None = None
        self.refuse = False
        self.accepted = 0
        self._faults = {"to_server": faults or Faults(), "to_client": faults or Faults()}
        self._live: list[ProxyConnection] = []
        self._accepted_event = anyio.Event()
        self._endpoint: str | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._unix_path: str | None = None

    def __repr__(self) -> str:
        return f"<FaultProxy {self._endpoint or self.listen} -> {self.upstream} live={len(self._live)}>"

    @property
    def endpoint(self) -> str:
        """Where the proxy listens, e.g. ``"tcp://127.0.0.1:40123"``: give it to clients."""
        if self._endpoint is None:
            raise RuntimeError("the proxy is not running: use `async with FaultProxy(...) as proxy`")
        return self._endpoint

    @property
    def connections(self) -> list[ProxyConnection]:
        """Live connections, oldest first."""
        return list(self._live)

    def faults(self, direction: Literal["to_server", "to_client"]) -> Faults:
        """The faults new connections get in ``direction``."""
        return self._faults[direction]

    def set_faults(self, faults: Faults, direction: Direction = "both") -> None:
        """Set ``direction``'s faults for new connections and for every live one."""
        directions = ["to_server", "to_client"] if direction == "both" else [direction]
        for d in directions:
            if d not in self._faults:
                raise ValueError(f"direction must be 'to_server', 'to_client' or 'both', not {direction!r}")
            self._faults[d] = faults
        for conn in self._live:
            conn.set_faults(faults, direction)

    def clear_faults(self) -> None:
        """No faults, both directions, new and live connections: what is held goes on."""
        self.set_faults(Faults())

    async def reset_all(self) -> None:
        """Reset every live connection and wait until their sockets are closed."""
        live = list(self._live)
        for conn in live:
            conn.reset()
        for conn in live:
            await conn.wait_closed()

    async def wait_accepted(self, count: int) -> None:
        """Wait until ``count`` connections have been accepted since the proxy started."""
        while self.accepted < count:
            await self._accepted_event.wait()

    async def __aenter__(self) -> FaultProxy:
        async with AsyncExitStack() as stack:
            listener = await self._listen()
            await stack.enter_async_context(listener)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(listener.serve, self._handle)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._stack is not None and self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            await self._stack.__aexit__(exc_type, exc, tb)
        finally:
            self._stack = self._tg = None
            if self._unix_path is not None:
                try:
                    os.unlink(self._unix_path)
                except FileNotFoundError:
                    pass

    async def _listen(self) -> Listener[ByteStream]:
        where = _parse(self.listen)
        if where.scheme == "unix":
            unix_listener = await anyio.create_unix_listener(where.path)
            self._unix_path = where.path
            self._endpoint = f"unix://{where.path}"
            return unix_listener
        tcp_listener = await anyio.create_tcp_listener(local_host=where.host, local_port=where.port)
        address = tcp_listener.extra(SocketAttribute.local_address)
        assert isinstance(address, tuple)
        host, port = address[0], address[1]
        self._endpoint = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
        return tcp_listener

    async def _connect(self) -> ByteStream:
        where = _parse(self.upstream)
        if where.scheme == "unix":
            return await anyio.connect_unix(where.path)
        return await anyio.connect_tcp(where.host, where.port)

    async def _handle(self, client: ByteStream) -> None:
        self.accepted += 1
        conn = ProxyConnection(self.accepted, client, self._faults)
        self._live.append(conn)
        self._accepted_event.set()
        self._accepted_event = anyio.Event()
        try:
            await conn._run(self._prepare, self._connect)
        finally:
            self._live.remove(conn)

    def _prepare(self, conn: ProxyConnection) -> None:
        if self.refuse:
            conn.reset()
        elif self.on_connect is not None:
            self.on_connect(conn)
        if any(pipe.faults.reset_after == 0 for pipe in conn.pipes("both")):
            conn.reset()  # reset at offset 0: at once


class _Address(NamedTuple):
    scheme: Literal["tcp", "unix"]
    host: str  # tcp
    port: int  # tcp
    path: str  # unix


def _parse(url: str) -> _Address:
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "unix" and rest:
        return _Address("unix", "", 0, rest)
    if sep and scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return _Address("tcp", host.strip("[]"), int(port), "")
    raise ValueError(f"expected tcp://host:port or unix:///path, not {url!r}")


async def _close(stream: ByteStream, *, reset: bool) -> None:
    """Close ``stream``, with an RST when ``reset`` (SO_LINGER 0).

    Nothing sent is lost to a plain close: anyio's ``send()`` returns once the bytes are
    the kernel's (on asyncio it sets the transport's write buffer limit to 0).
    """
    if reset:
        try:
            sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (anyio.TypedAttributeLookupError, AttributeError, OSError):
            pass  # not a socket, or already closed (asyncio's transports forget theirs)
    await stream.aclose()
