"""The ``server-connection`` target: a server's connection logic fed arbitrary frames after a valid hello.

A :class:`~callrt.connection.server.ServerConnection` of a real
:class:`~callrt.connection.server.Server` (a :class:`HandlerMap` with two
components and ``callrt.Health``) is driven the way the transport shells drive
it, without sockets or an event loop: a :class:`FakeIO` is its
:class:`~callrt.connection.server.ServerIO`, frames come from a
:class:`~callrt.protocol.FrameDecoder` over the input, async handlers run as
coroutines stepped by the harness (each in a context of its own, as a task
would), the stream arrives in 1 KiB reads with the shells'
:class:`~callrt.connection.server.ConnectionWatchdog` (handshake, idle and body
timers, the server's budget of partial bodies), and a schedule in the input
says, after each frame and while waiting for bytes, when parked handlers
resume, when time passes (deadlines; the watchdog's tick), and when every
call is run to its end.

Input layout: an options byte, a schedule length ``n`` and ``n`` schedule bytes,
then the byte stream. The options byte picks the server (plain, with an access
policy, with compression, both), whether the peer is local (tracebacks in
errors), a valid hello to put in front (protocol version 1, 2 or 3, or none: the
input's own), the peer's maximum frame (4 KiB or 1 MiB), whether the server
is at ``max_connections`` when it accepts (then the hello is refused), and
which shell to act as: the stream shell (every async call through
``call_async``) or the asyncio shell (a plain call, ``run_plain``, through
the method's :class:`~callrt.component.AwaitableMethod` with the connection's
slot holding it until it suspends).

Checked for every input:

- only :class:`~callrt.errors.RemoteProtocolError` leaves the connection's
  methods (the shell then closes the connection, and ``protocol_error`` logs it
  without raising); no exception escapes a handler's call either;
- the server's count of partial bodies is this connection's, is the decoder's,
  and is back to 0 once the connection is gone, however it ended (a timer,
  the budget, a protocol error, the end of the input);
- calls in flight stay bounded: a frame starts at most one call, and with the
  shells' backpressure (no frame is read while ``max_calls_per_connection``
  calls are in flight) there are never more; the connection's per-call state
  (``streams``) holds nothing for a call not in flight, and nothing once every
  call has ended;
- what the server writes is a valid stream for a client (a hello reply first,
  then frames a client's decoder accepts, none over the peer's maximum frame
  when that maximum is a realistic 4 KiB or more);
- every request gets at most one reply (a response or an error, compressed or
  not), never a reply for a request not received; without a protocol error,
  once every call has ended, exactly one; every ping gets its pong.
"""

from __future__ import annotations

import contextvars
import struct
from collections import Counter
from collections.abc import Coroutine, Generator
from typing import Annotated, Any

import anyio
import msgspec

from callrt import component, inline
from callrt.access import AllowList
from callrt.component import component_spec
from callrt.connection.server import ConnectionWatchdog, Server, ServerConnection, run_watched
from callrt.context import Peer
from callrt.errors import DeadlineExceeded, ErrorCode, RemoteError, RemoteProtocolError
from callrt.handlers import HandlerMap, RegisteredHandler
from callrt.health import add_health
from callrt.options import ServerOptions
from callrt.protocol import (
    Cancel,
    Compressed,
    Error,
    FrameDecoder,
    GoAway,
    Hello,
    HelloReply,
    Ping,
    Pong,
    Request,
    Response,
    Settings,
    TraceContext,
    encode_frame,
    encode_hello,
)

__all__ = ("FakeIO", "server_connection", "server_connection_seeds")


class Finding(AssertionError):
    """An invariant of the server's connection logic does not hold for this input."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Finding(what)


# -- the components it serves ------------------------------------------------------------------------


class OutOfStock(Exception):
    def __init__(self, sku: str, left: int) -> None:
        super().__init__(sku, left)


_PARKED = object()  # what a parked handler yields to the harness (a task would yield to its loop)


class _Park:
    def __await__(self) -> Generator[Any, None, None]:
        yield _PARKED


@component(name="fuzz.Calc", errors=(OutOfStock,))
class Calc:
    @inline
    def add(self, a: int, b: int = 0) -> int:
        return a + b

    @inline
    def echo(self, data: bytes, times: Annotated[int, msgspec.Meta(ge=0, le=4)] = 1) -> bytes:
        return data * times

    @inline
    def fail(self, kind: int) -> None:
        if kind == 0:
            raise ValueError("an unexpected failure")
        if kind == 1:
            raise OutOfStock("sku-1", kind)
        if kind == 2:
            raise RemoteError("no such thing", code=ErrorCode.NOT_FOUND)
        # Messages longer than a small peer's maximum frame: the error must be cut to fit it.
        if kind == 3:
            raise ValueError("a long story " * 800)
        raise OutOfStock("\u00e9" * 3000, kind)

    @inline
    def big(self, size: Annotated[int, msgspec.Meta(ge=0, le=1 << 17)]) -> bytes:
        """A result larger than a small peer's maximum frame (then a resource_exhausted error)."""
        return bytes(size)

    async def upper(self, text: str) -> str:
        return text.upper()

    async def park(self, n: int, fail: bool = False) -> int:
        """Waits (the harness resumes it when the schedule says), then answers or raises."""
        await _Park()
        if fail:
            raise OutOfStock("parked", n)
        return n


@component(name="fuzz.Store")
class Store:
    async def get(self, key: str, default: str | None = None) -> str | None:
        return default if key else None

    async def put(self, key: str, value: bytes) -> int:
        await _Park()
        await _Park()
        return len(key) + len(value)


MAX_CALLS = 6  # max_calls_per_connection of the servers under test: small, so backpressure is reached
READ_SIZE = 1024  # bytes per read of the stream, as a socket would deliver them
PEER_MAX_FRAMES = (4096, 1 << 20)


def _servers() -> list[Server]:
    """Four servers (plain, access policy, compression, both), made once: ``Server`` needs an event loop."""

    async def make() -> list[Server]:
        servers = []
        for variant in range(4):
            options = ServerOptions(
                max_calls_per_connection=MAX_CALLS,
                max_frame_size=1 << 16,
                # Small enough for a schedule to reach: handshake 2 s, body 1 s, idle 3 s, partial bodies 24 KiB.
                handshake_timeout=2.0,
                body_timeout=1.0,
                idle_timeout=3.0,
                max_partial_bodies=24 << 10,
                access=AllowList({"fuzz.Calc": ["*"], "fuzz.Store.get": ["*"], "callrt.Health": ["*"]})
                if variant & 1
                else None,
                compression=("zlib",) if variant & 2 else None,
                compression_threshold=64,
            )
            handlers = HandlerMap()
            handlers.add_handlers(None, Calc())
            handlers.add_handlers(None, Store())
            server = Server(handlers, options)
            add_health(server)
            servers.append(server)
        return servers

    return anyio.run(make)


_SERVERS: list[Server] = []


# -- the fake shell ----------------------------------------------------------------------------------


class _Cancel(BaseException):
    """What a cancelled task gets at its await: the harness's CancelledError."""


class _Call:
    __slots__ = ("context", "coro", "deadline", "name")

    def __init__(self, coro: Coroutine[Any, Any, None], deadline: float | None, name: str) -> None:
        self.coro = coro
        self.deadline = deadline
        self.name = name
        self.context = contextvars.copy_context()  # a task's own context


class FakeIO:
    """A :class:`~callrt.connection.server.ServerIO` in memory: writes are kept, async calls are stepped by hand."""

    def __init__(self, fast_path: bool = False) -> None:
        self.fast_path = fast_path  # run_plain as the asyncio shell does (else as run_async)
        self.out = bytearray()
        self.calls: dict[int, _Call] = {}
        self.closed = False
        self.clock = 0.0
        self.conn: ServerConnection | None = None

    # ServerIO
    def write(self, data: bytes) -> None:
        check(type(data) in (bytes, bytearray), f"wrote a {type(data).__name__}")
        self.out += data

    def run_async(self, request: Request, entry: RegisteredHandler, deadline: float | None) -> None:
        if request.id in self.calls:  # the shells' contract (ServerIO.run_async)
            raise RemoteProtocolError(f"request id {request.id} reused while its call is in flight")
        conn = self.conn
        assert conn is not None
        self._start(request.id, conn.call_async(request, entry, deadline, conn.left_the_loop), deadline, entry.name)

    def run_plain(self, request: Request, entry: RegisteredHandler) -> None:
        if not self.fast_path:
            self.run_async(request, entry, None)
            return
        if request.id in self.calls:  # the asyncio shell finds it when the call starts: the same, sooner
            raise RemoteProtocolError(f"request id {request.id} reused while its call is in flight")
        self._start(request.id, self._plain(request, entry), None, entry.name)

    async def _plain(self, request: Request, entry: RegisteredHandler) -> None:
        """What the asyncio shell's dispatcher does with a plain call: the slot holds it until it suspends."""
        conn = self.conn
        assert conn is not None and entry.awaitable is not None
        conn.slot.call = (request, entry.name, None, conn.peer)
        try:
            result = await run_watched(entry.awaitable.run(request.payload), conn.left_the_loop)
        except Exception as exc:
            conn.call_failed(request.id, entry.name, exc)
        else:
            conn.reply(request.id, result, request.accept)
        finally:
            conn.slot.call = None

    def _start(self, request_id: int, coro: Coroutine[Any, Any, None], deadline: float | None, name: str) -> None:
        self.calls[request_id] = _Call(coro, deadline, name)
        self.step(request_id)

    def cancel_running(self, request_id: int, reason: RemoteError) -> None:
        if request_id in self.calls:
            self.step(request_id, reason)

    def close(self) -> None:
        self.closed = True

    # the harness
    def now(self) -> float:
        return self.clock

    def step(self, request_id: int, cancel: RemoteError | None = None) -> None:
        """Resume call ``request_id`` once (or cancel it, replying ``cancel`` as the shells do)."""
        call = self.calls[request_id]
        try:
            if cancel is None:
                yielded = call.context.run(call.coro.send, None)
            else:
                yielded = call.context.run(call.coro.throw, _Cancel())
        except StopIteration:
            del self.calls[request_id]
            return
        except _Cancel:
            check(cancel is not None, "a cancellation came out of a call that was not cancelled")
            del self.calls[request_id]
            assert self.conn is not None and cancel is not None
            self.conn.fail(request_id, cancel)
            return
        except Exception as exc:
            raise Finding(f"{type(exc).__name__} escaped the call of {call.name}: {exc}") from exc
        check(yielded is _PARKED, f"the call of {call.name} waited on {yielded!r}, not on the harness")
        check(cancel is None, f"the call of {call.name} went on after it was cancelled")

    def finish(self, request_id: int) -> None:
        while request_id in self.calls:
            self.step(request_id)

    def expire(self) -> None:
        """Cancel the calls whose deadline has passed (the shells' cancel scopes)."""
        for request_id, call in list(self.calls.items()):
            if call.deadline is not None and call.deadline <= self.clock and request_id in self.calls:
                self.step(request_id, DeadlineExceeded(f"{call.name}: deadline exceeded"))

    def abandon(self) -> None:
        """The connection is gone: its tasks are cancelled and reply nothing."""
        for call in self.calls.values():
            call.context.run(call.coro.close)
        self.calls.clear()


# -- the target --------------------------------------------------------------------------------------


def _replies(out: bytes, peer_max: int) -> tuple[Counter[int], int]:
    """The replies (by request id) and pongs in what the server wrote, checking it is a valid stream."""
    decoder = FrameDecoder(peer_max if peer_max >= 4096 else 1 << 32, expect="hello_reply")
    decoder.receive_data(out)
    try:
        frames = decoder.frames()
    except RemoteProtocolError as exc:
        raise Finding(f"the server wrote what a client cannot read: {exc}") from exc
    check(decoder.buffered == 0, "the server wrote part of a frame")
    replies: Counter[int] = Counter()
    pongs = 0
    for frame in frames:
        inner = frame.frame if type(frame) is Compressed else frame
        if type(inner) in (Response, Error):
            replies[inner.id] += 1  # type: ignore[union-attr]
        elif type(inner) is Pong:
            pongs += 1
        else:
            check(type(inner) in (HelloReply, Settings, GoAway), f"the server wrote a {type(inner).__name__}")
    return replies, pongs


def _act(action: int, io: FakeIO, watchdog: ConnectionWatchdog) -> bool:
    """One schedule byte: resume a parked call, let time pass (then the shell's tick), or run every
    call to its end; whether the connection is still open."""
    if 64 <= action < 128 and io.calls:
        io.step(list(io.calls)[action % len(io.calls)])
    elif 128 <= action < 192:
        io.clock += (action - 127) * 0.05
        io.expire()
        # The shells' first tick comes handshake_timeout after accept, then one per interval.
        return io.clock < watchdog.conn.server.options.handshake_timeout or not watchdog.expired()
    elif action >= 192:
        for request_id in list(io.calls):
            io.finish(request_id)
    return True


def server_connection(data: bytes) -> None:
    """Arbitrary frames, after a valid hello, to a server's connection logic; see the module docstring."""
    if len(data) < 2:
        return
    if not _SERVERS:
        _SERVERS.extend(_servers())
    options, length = data[0], data[1]
    schedule, stream = data[2 : 2 + length], data[2 + length :]
    server = _SERVERS[options & 3]
    peer_max = PEER_MAX_FRAMES[(options >> 5) & 1]
    version = (options >> 3) & 3
    if version:
        stream = encode_hello(Hello(1, version, peer_max)) + stream

    io = FakeIO(fast_path=bool(options & 0x80))
    if options & 0x40:  # accepted at max_connections: the hello is answered with a refusal
        server.handshaking = server.options.max_connections
    try:
        conn = io.conn = ServerConnection(server, io)
    finally:
        server.handshaking = 0
    conn.peer = Peer("tcp://203.0.113.9:4000", local=bool(options & 4), uri_sans=("spiffe://fuzz/client",))
    conn.now = io.now
    server.connection_opened(conn)
    decoder = FrameDecoder(server.options.max_frame_size, expect="hello")
    # The shells' timers (handshake, idle, body) and the server-wide budget of partial bodies.
    watchdog = ConnectionWatchdog(conn, decoder, io.now, lambda: bool(io.calls))
    requests: Counter[int] = Counter()
    pings = 0
    broken = False
    ended = ""  # why the shell's watchdog closed the connection
    received = 0
    actions = iter(schedule)
    token = conn.start_reading()
    try:
        while True:
            if len(io.calls) >= MAX_CALLS:  # backpressure: the shells read nothing more until one ends
                io.finish(next(iter(io.calls)))
            frame = decoder.next_frame()
            if frame is None:  # waiting for bytes: time may pass (a body that trickles, a silent peer)
                action = next(actions, None)
                if action is None and received >= len(stream):
                    break
                if action is not None and not _act(action, io, watchdog):
                    ended = "a timer"
                    break
                if received >= len(stream):
                    continue
                decoder.receive_data(stream[received : received + READ_SIZE])  # the shells read in chunks
                received += READ_SIZE
                watchdog.heard = True
                if (decoder.partial_body_bytes or watchdog.partial) and watchdog.account_partial():
                    ended = "over max_partial_bodies"
                    break
                check(
                    server.partial_bodies == watchdog.partial == decoder.partial_body_bytes,
                    f"partial bodies: server {server.partial_bodies}, connection {watchdog.partial},"
                    f" decoder {decoder.partial_body_bytes}",
                )
                continue
            watchdog.frames += 1
            inner = frame.frame if type(frame) is Compressed else frame
            if type(inner) is Request:
                requests[inner.id] += 1
            elif type(inner) is Ping:
                pings += 1
            in_flight = len(io.calls)
            if type(frame) is Hello:
                conn.hello_received(frame)
            else:
                conn.frame_received(frame)
            check(len(io.calls) <= in_flight + 1, "one frame started more than one call")
            check(len(io.calls) <= MAX_CALLS, f"{len(io.calls)} calls in flight, over {MAX_CALLS}")
            check(set(conn.streams) <= set(io.calls), "per-call state held for a call not in flight")
            if not _act(next(actions, 0), io, watchdog):
                ended = "a timer"
                break
    except RemoteProtocolError as exc:
        broken = True
        conn.protocol_error(exc)  # logs; must not raise
    except Finding:
        raise
    except Exception as exc:
        raise Finding(f"{type(exc).__name__} escaped the connection: {exc}") from exc
    finally:
        conn.stop_reading(token)
        if broken or ended or io.closed:
            io.abandon()
        watchdog.release()
        server.connection_closed(conn)
    check(server.partial_bodies == 0, f"{server.partial_bodies} bytes of partial bodies left on the server")
    if ended:
        broken = True  # closed by the shell: calls in flight get no reply, as after a protocol error
    if not broken:
        for request_id in list(io.calls):
            io.finish(request_id)
        check(not conn.streams, "per-call state left after every call ended")
        conn.goaway("fuzz: done")
    if not conn.handshake_done and not version:
        return  # the input's own first bytes were no hello: nothing was answered
    replies, pongs = _replies(bytes(io.out), peer_max)
    for request_id, n in replies.items():
        check(n <= requests[request_id], f"request {request_id}: {n} replies to {requests[request_id]} requests")
    if conn.refuse_busy:
        check(broken and not conn.handshake_done and not replies, "a refused connection went on")
    if not broken and conn.handshake_done:
        check(replies == +requests, f"not every request got its reply: {replies} for {requests}")
        check(pongs == pings, f"{pongs} pongs for {pings} pings")


# -- seeds -------------------------------------------------------------------------------------------


def _key(component: type, method: str) -> bytes:
    return bytes(component_spec(component).methods[method].key)


def _args(*values: Any) -> bytes:
    return msgspec.msgpack.encode(values)


def _input(
    frames: list[Any],
    *,
    version: int = 2,
    server: int = 0,
    peer_max: int = 1,
    schedule: bytes = b"",
    busy: bool = False,
    fast_path: bool = False,
) -> bytes:
    options = server | 4 | version << 3 | peer_max << 5 | busy << 6 | fast_path << 7
    return bytes((options, len(schedule))) + schedule + b"".join(encode_frame(f) for f in frames)


def server_connection_seeds() -> list[bytes]:
    add, echo, fail, big = (_key(Calc, m) for m in ("add", "echo", "fail", "big"))
    upper, park = _key(Calc, "upper"), _key(Calc, "park")
    get, put = _key(Store, "get"), _key(Store, "put")
    health = bytes(make_health_key())
    trace = TraceContext(b"t" * 16, b"s" * 8, 1, "vendor=abc")
    calls = [
        Request(1, add, _args(2, 3)),
        Request(2, add, _args(2)),  # a default filled in
        Request(3, echo, _args(b"hi", 3), deadline_us=5_000_000),
        Request(4, fail, _args(0)),
        Request(5, fail, _args(1)),
        Request(6, fail, _args(2)),
        Request(19, fail, _args(3)),
        Request(20, fail, _args(4)),
        Request(7, upper, _args("abc"), metadata=(("tenant", "t1"),), caller="fuzz", shard_key=3),
        Request(8, park, _args(8)),
        Request(9, park, _args(9, True), deadline_us=20_000),
        Request(10, get, _args("k", "v")),
        Request(11, put, _args("k", b"v")),
        Request(12, health, _args("")),
        Request(13, add, _args("not an int", 1)),  # invalid argument
        Request(14, echo, _args(b"x", 9)),  # outside the constraint
        Request(15, b"\x00" * 16, _args()),  # unknown method
        Request(16, big, _args(8000)),  # over a small peer's maximum frame
        Request(17, add, _args(1, 2), deadline_us=0),  # deadline passed on arrival
        Request(18, upper, _args("t"), trace=trace),
        Cancel(8),
        Ping(1),
        Pong(2),
    ]
    seeds = [
        _input(calls),
        _input(calls, version=1, server=1, schedule=bytes([0, 64, 130, 0, 200, 65, 255])),
        _input(calls, version=3, server=2, peer_max=0, schedule=bytes([70, 140, 66])),
        _input(calls, version=3, server=3),
        _input(calls, busy=True),  # accepted at max_connections: refused
        _input(calls, fast_path=True, schedule=bytes([0, 64, 0, 65, 140, 0, 200])),  # as the asyncio shell
        _input([Request(i, put, _args("k", b"v")) for i in range(1, 9)] + [Cancel(2)], fast_path=True),
        # A duplicate id while the first call is parked: a protocol error.
        _input([Request(1, park, _args(1)), Request(1, park, _args(2))]),
        # An id reused after its call ended is fine.
        _input([Request(1, add, _args(1, 1)), Request(1, add, _args(2, 2))]),
        # More parked calls than max_calls_per_connection: backpressure.
        _input([Request(i, put, _args("k", b"v")) for i in range(1, 10)] + [Cancel(3)], schedule=bytes([64] * 9)),
        # Compressed requests (zlib is codec 1 in callrt.compression), on the compressing server.
        _input(
            [
                Compressed(Request(1, echo, _zlib(_args(b"a" * 200, 2)), accept=1), 1),
                Request(2, big, _args(300), accept=1),
            ],
            version=3,
            server=2,
        ),
        # A body that trickles: its header and part of it, then time passes (the body timeout).
        _input([Request(1, echo, _args(b"z" * 8000))], schedule=bytes([0, 0, 191, 191, 191]))[:-3000],
        # Partial bodies over the server's budget (24 KiB): a 40 KiB body, 30 KiB of it sent.
        _input([Request(1, echo, _args(b"y" * 40000))])[:-10000],
        # A silent peer after the hello: idle, then closed by the idle timer.
        _input([Ping(1)], schedule=bytes([0, 0, 0] + [191] * 6)),
        # No hello in front: the input's own (a hello with no common version).
        bytes((0, 0)) + encode_hello(Hello(7, 9, 4096)) + encode_frame(Ping(1)),
    ]
    return seeds


def _zlib(payload: bytes) -> bytes:
    import zlib

    return struct.pack("<I", len(payload)) + zlib.compress(payload)


def make_health_key() -> bytes:
    from callrt.health import Health

    return _key(Health, "check")
