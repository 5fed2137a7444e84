"""What the client lifecycle tests run against: a component for worker processes, and fake servers.

:class:`Who` is served by worker processes. A worker's identity comes from its
environment: ``LIFECYCLE_NAME`` (default: its pid), so a test can tell which
replica served a call. ``LIFECYCLE_DELAY`` (seconds, default 0) delays every
:meth:`Who.work` call: a slow replica.

:class:`FakeServer` is a listener on a real socket in the test's own event loop
that misbehaves exactly as told: never finishing the handshake, going silent,
dropping a connection when a request arrives.
"""

from __future__ import annotations

import os

import anyio
import anyio.abc

from callrt import component, not_retriable


def _name() -> str:
    return os.environ.get("LIFECYCLE_NAME", str(os.getpid()))


@component(name="lifecycle.Who")
class Who:
    def __init__(self, name: str | None = None) -> None:
        self._name = name if name is not None else _name()
        self._delay = float(os.environ.get("LIFECYCLE_DELAY", "0"))

    def name(self) -> str:
        """Which replica this is."""
        return self._name

    def pid(self) -> int:
        return os.getpid()

    async def work(self, i: int) -> str:
        """A unit of load: waits ``LIFECYCLE_DELAY`` (a slow replica) and says who served it."""
        if self._delay:
            await anyio.sleep(self._delay)
        return self._name

    async def nap(self, seconds: float) -> str:
        """A long call: sleeps, then says who served it."""
        await anyio.sleep(seconds)
        return self._name

    def fail(self, message: str) -> None:
        raise ValueError(message)

    @not_retriable
    async def nap_once(self, seconds: float) -> str:
        await anyio.sleep(seconds)
        return self._name


# -- in-process fake servers: peers that misbehave on purpose ------------------


class FakeServer:
    """A TCP listener in the test's own event loop that speaks just enough callrt to misbehave.

    ``modes`` says what each accepted connection does, in order (the last mode
    repeats):

    - ``"close"``: close at once, before any hello reply.
    - ``"mute"``: read everything, never answer the hello (a handshake that never ends).
    - ``"hold"``: answer the hello, keep the connection ``hold`` seconds (or until
      the client sends anything), then close.
    - ``"silent"``: answer the hello, then read and ignore everything: no pongs, no replies.
    - ``"drop_on_request"``: answer the hello and pongs; close when a request arrives.
    - ``"gated"``: answer the hello only once :attr:`gate` is set.

    :attr:`accepted` holds ``(accept_time, close_time)`` per connection (``anyio.current_time()``;
    ``close_time`` is ``None`` while open); :attr:`hellos` counts hellos received;
    :attr:`requests` counts requests received.
    """

    def __init__(self, *modes: str, hold: float = 0.05, once: bool = False) -> None:
        from callrt.endpoints import Endpoint

        assert modes, "give at least one mode"
        self.modes = modes
        self.hold = hold
        self.once = once  # stop listening after the first connection (later dials are refused)
        self.accepted: list[list[float | None]] = []
        self.hellos = 0
        self.requests = 0
        self.endpoint: Endpoint | None = None
        self.gate: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._listener: anyio.abc.SocketListener | None = None

    async def __aenter__(self) -> FakeServer:
        from callrt.endpoints import tcp

        self.gate = anyio.Event()
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self._listener = listener.listeners[0]
        port = self._listener.extra(anyio.abc.SocketAttribute.local_port)
        self.endpoint = tcp(f"127.0.0.1:{port}")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._accept_loop)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tg is not None and self._listener is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)
        await self._listener.aclose()

    async def _accept_loop(self) -> None:
        assert self._listener is not None and self._tg is not None
        while True:
            stream = await self._listener.accept()
            mode = self.modes[min(len(self.accepted), len(self.modes) - 1)]
            record: list[float | None] = [anyio.current_time(), None]
            self.accepted.append(record)
            self._tg.start_soon(self._handle, stream, mode, record)
            if self.once:
                await self._listener.aclose()
                return

    async def _handle(self, stream: anyio.abc.SocketStream, mode: str, record: list[float | None]) -> None:
        from callrt.protocol import (
            DEFAULT_MAX_FRAME_SIZE,
            HELLO_SIZE,
            PROTOCOL_VERSION,
            FrameDecoder,
            HelloReply,
            Ping,
            Pong,
            Request,
            Settings,
            encode_frame,
            encode_hello_reply,
        )

        try:
            if mode == "close":
                return
            buf = b""
            while len(buf) < HELLO_SIZE:
                buf += await stream.receive()
            self.hellos += 1
            if mode == "mute":
                while True:
                    await stream.receive()
            if mode == "gated":
                assert self.gate is not None
                await self.gate.wait()
            # Version 3: the server's SETTINGS follow its hello reply at once (no codec offered here).
            await stream.send(
                encode_hello_reply(HelloReply(PROTOCOL_VERSION, DEFAULT_MAX_FRAME_SIZE)) + encode_frame(Settings())
            )
            if mode == "hold":
                with anyio.move_on_after(self.hold):
                    await stream.receive()
                return
            decoder = FrameDecoder(DEFAULT_MAX_FRAME_SIZE)
            decoder.receive_data(buf[HELLO_SIZE:])
            while True:
                while (frame := decoder.next_frame()) is not None:
                    if mode == "silent":
                        continue
                    if type(frame) is Request:
                        self.requests += 1
                        if mode == "drop_on_request":
                            return
                    elif type(frame) is Ping:
                        await stream.send(encode_frame(Pong(frame.id)))
                decoder.receive_data(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            record[1] = anyio.current_time()
            with anyio.CancelScope(shield=True):
                await stream.aclose()
