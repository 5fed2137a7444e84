"""A conformance suite for transports: what every way of carrying callrt's frames must do.

Like trio's ``check_two_way_stream``, :func:`check_transport` takes a
transport and an endpoint it can listen on, serves a probe component through
it, and checks the contract the rest of callrt relies on: the hello, calls,
ping, cancel, oversized frames, goaway, and connections closed abruptly from
either side. It raises ``AssertionError`` (or the error that broke the
contract) on the first failure. callrt's own transports run it in its test
suite; a new transport (TLS, a relay) must pass it too::

    await check_transport(StreamTransport(), "tcp://127.0.0.1:0")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio

from ..component import component, component_spec
from ..connection.client import ClientSession
from ..connection.server import Server
from ..endpoints import Endpoint, parse_endpoint
from ..errors import ErrorCode, LocalProtocolError, RemoteError, SessionLost
from ..handlers import HandlerMap
from ..options import ClientOptions, ServerOptions
from ..protocol import FrameKind, Ping, encode_frame, pack_frame_header
from ..transport import Transport

__all__ = ("check_transport",)

_MAX_FRAME = 1 << 16
_TIMEOUT = 10.0  # for each check; a conforming transport on loopback takes milliseconds


@component(name="callrt.testing.Probe")
class _Probe:
    """What the checks call: an echo, a handler that waits to be released or cancelled, a large result."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = anyio.Event()

    async def echo(self, data: bytes) -> bytes:
        return data

    async def hold(self) -> str:
        self.started.set()
        try:
            await self.release.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        return "released"

    def large(self, size: int) -> bytes:
        return b"x" * size


_METHODS = component_spec(_Probe).methods


def _start(session: ClientSession, method: str, *args: Any) -> tuple[int, Any]:
    spec = _METHODS[method]
    return session.start(spec.key, spec.encode_args(args), math.inf, None, None)


async def _call(session: ClientSession, method: str, *args: Any) -> Any:
    _, waiter = _start(session, method, *args)
    return _METHODS[method].decode_result(await waiter)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition that no event announces (polling); ``what`` failed if it never holds."""
    with anyio.move_on_after(_TIMEOUT / 2):
        while not condition():  # noqa: ASYNC110  # no event announces these conditions
            await anyio.sleep(0.001)
    if not condition():
        raise AssertionError(what)


async def check_transport(transport: Transport, endpoint: Endpoint | str) -> None:
    """Check that ``transport`` carries callrt's frames as the rest of callrt expects.

    ``endpoint`` is where to listen (``tcp://127.0.0.1:0`` binds a free port).
    """
    probe = _Probe()
    handlers = HandlerMap()
    handlers.add_handlers(None, probe)
    server = Server(handlers, ServerOptions(max_frame_size=_MAX_FRAME, drain_grace=_TIMEOUT))
    options = ClientOptions(max_frame_size=_MAX_FRAME, keepalive_interval=0)
    failure: Exception | None = None
    async with anyio.create_task_group() as connections:
        try:
            async with transport.listen(parse_endpoint(endpoint), server, connections) as bound:
                with anyio.fail_after(_TIMEOUT):
                    await _check_calls(transport, bound, options, probe)
                with anyio.fail_after(_TIMEOUT):
                    await _check_oversized_frame(transport, bound, options)
                with anyio.fail_after(_TIMEOUT):
                    await _check_abrupt_close(transport, bound, options, server)
                with anyio.fail_after(_TIMEOUT):
                    await _check_goaway(transport, bound, options, server, probe)
        except Exception as exc:
            failure = exc  # raised below, as itself rather than inside the task group's exception group
        connections.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _check_calls(transport: Transport, endpoint: Endpoint, options: ClientOptions, probe: _Probe) -> None:
    async with transport.connect(endpoint, options) as session:
        # The hello: the session is ready and knows the server's maximum frame.
        assert session.ready.is_set() and not session.lost.is_set(), "connect() returned before the hello reply"
        assert session.peer_max_frame == _MAX_FRAME, f"hello reply carried {session.peer_max_frame}"
        # Calls, several in flight, replies matched to their requests.
        payloads = [bytes([i]) * (i * 100) for i in range(1, 9)]
        waiters = [_start(session, "echo", p)[1] for p in payloads]
        results = [_METHODS["echo"].decode_result(await w) for w in waiters]
        assert results == payloads, "replies do not match their requests"
        # Ping: the server answers.
        pongs = session.pongs
        session.write(encode_frame(Ping(7)))
        await _until(lambda: session.pongs > pongs, "no pong")
        # Cancel: the running handler is cancelled.
        request_id, _ = _start(session, "hold")
        await probe.started.wait()
        session.give_up(request_id, math.inf)
        await probe.cancelled.wait()
        # A request over the server's maximum fails locally, before it is sent.
        try:
            _start(session, "echo", b"x" * _MAX_FRAME)
        except LocalProtocolError:
            pass
        else:
            raise AssertionError("a request over the server's maximum frame was sent")
        # A result over the client's maximum fails that call only.
        try:
            await _call(session, "large", _MAX_FRAME * 2)
        except RemoteError as exc:
            assert exc.code is ErrorCode.RESOURCE_EXHAUSTED, exc
        else:
            raise AssertionError("a result over the client's maximum frame was sent")
        assert await _call(session, "echo", b"still here") == b"still here"


async def _check_oversized_frame(transport: Transport, endpoint: Endpoint, options: ClientOptions) -> None:
    """A frame header announcing more than the maximum closes that connection, before any body."""
    async with transport.connect(endpoint, options) as session:
        session.write(pack_frame_header(_MAX_FRAME + 1, int(FrameKind.REQUEST), 99))
        await session.lost.wait()
    async with transport.connect(endpoint, options) as session:
        assert await _call(session, "echo", b"next") == b"next", "the server stopped serving"


async def _check_abrupt_close(transport: Transport, endpoint: Endpoint, options: ClientOptions, server: Server) -> None:
    await _until(lambda: not server.connections, "the server kept connections their clients closed")
    # The client goes away: the server forgets the connection.
    async with transport.connect(endpoint, options) as session:
        await _until(lambda: len(server.connections) == 1, "the server did not see the connection")
        session.abort(SessionLost("the test closed it"))
    await _until(lambda: not server.connections, "the server kept a connection its client closed")
    # The server closes: calls in flight fail with SessionLost, the session is lost.
    async with transport.connect(endpoint, options) as session:
        _, waiter = _start(session, "hold")
        await _until(lambda: len(server.connections) == 1, "the server did not see the connection")
        for conn in list(server.connections):
            conn.close()
        await session.lost.wait()
        try:
            await waiter
        except SessionLost:
            pass
        else:
            raise AssertionError("a call in flight on a closed connection did not fail")


async def _check_goaway(
    transport: Transport, endpoint: Endpoint, options: ClientOptions, server: Server, probe: _Probe
) -> None:
    """Drain: the client hears goaway, its call in flight completes, then the drain ends."""
    probe.started, probe.release = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg, transport.connect(endpoint, options) as session:
        _, waiter = _start(session, "hold")
        await probe.started.wait()
        tg.start_soon(server.drain)
        await session.goaway.wait()
        probe.release.set()
        assert _METHODS["hold"].decode_result(await waiter) == "released", "the call in flight was lost"
