"""Flow control on the asyncio shell, over real sockets: many large calls in flight.

24 calls of 1 MiB leave together, and the server answers none until all have
arrived, then all at once: both ends fill their transport's buffer and must be
asked to pause (or this test would not test anything), hold what they write
meanwhile, and resume in order: every call gets its own bytes back. On
the default loop this is the path that used to pile tens of megabytes into the
transport's bytearray. The trio shell awaits each send, so this is about asyncio.
Against a recording transport: a server that closes while paused still hands
over the replies it held, in order, before the transport closes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from callrt import call, component, inline
from callrt.connection.server import Server
from callrt.keys import make_method_key
from callrt.protocol import FrameDecoder, Hello, Request, Response, encode_frame
from callrt.server import _handler_map
from callrt.transport._asyncio import ServerProtocol, _Writer
from tests.support import ASYNCIO_ONLY

pytestmark = pytest.mark.anyio

IN_FLIGHT = 24
SIZE = 1 << 20


@component(name="tests.Gate")
class Gate:
    """Echoes, but answers nobody until ``expected`` calls have arrived, then everybody at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.open = anyio.Event()

    async def echo(self, data: bytes) -> bytes:
        self.arrived += 1
        if self.arrived == self.expected:
            self.open.set()
        await self.open.wait()
        return data


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_large_calls_in_flight_pause_both_ends_and_all_complete(
    anyio_backend: object, transport: str, sockdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: Counter[str] = Counter()
    pause = _Writer.pause_writing

    def counted(self: _Writer) -> None:
        pauses[type(self).__name__] += 1
        pause(self)

    monkeypatch.setattr(_Writer, "pause_writing", counted)
    address = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{sockdir}/echo.sock"
    payloads = [bytes([i]) * SIZE for i in range(IN_FLIGHT)]
    results: dict[int, bytes] = {}
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            server: call.Server = await tg.start(partial(call.serve, address, Gate(IN_FLIGHT)))
            async with call.connect(call.ConstantResolver([server.endpoint])) as conn:
                gate = conn.stub(Gate)

                async def one(i: int) -> None:
                    results[i] = await gate.echo(payloads[i])

                async with anyio.create_task_group() as calls:
                    for i in range(IN_FLIGHT):
                        calls.start_soon(one, i)
            server.stop()
    assert pauses["ClientProtocol"] > 0 and pauses["ServerProtocol"] > 0, pauses
    assert all(results[i] == payloads[i] for i in range(IN_FLIGHT))


class _ClosingRecorder(asyncio.Transport):
    """Keeps every frame written, in order, and whether it was closed after them."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = FrameDecoder(expect="hello_reply")  # the server answers the hello first
        self.responses: list[int] = []
        self.closed_after = -1

    def write(self, data: Any) -> None:
        self.decoder.receive_data(bytes(data))
        self.responses += [frame.id for frame in self.decoder.frames() if isinstance(frame, Response)]

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass  # the server stops reading while its replies are held; nothing to read here anyway

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed_after >= 0

    def close(self) -> None:
        self.closed_after = len(self.responses)


@component(name="tests.Plain")
class Plain:
    @inline  # replies within data_received, which the test reads right after it
    def echo(self, data: bytes) -> bytes:
        return data


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_a_server_closing_while_paused_hands_over_what_it_held(anyio_backend: object) -> None:
    protocol = ServerProtocol(Server(_handler_map([Plain()]), call.ServerOptions()))
    transport = _ClosingRecorder()
    protocol.connection_made(transport)
    protocol.data_received(encode_frame(Hello(1, 1, 1 << 20)))
    key = make_method_key("tests.Plain", "echo")
    args = msgspec.msgpack.encode((b"x",))
    protocol.data_received(encode_frame(Request(1, key, args)))
    protocol.pause_writing()
    protocol.data_received(b"".join(encode_frame(Request(i, key, args)) for i in (2, 3)))
    assert transport.responses == [1]  # 2 and 3 are held
    protocol.close()
    assert transport.responses == [1, 2, 3] and transport.closed_after == 3
    protocol.connection_lost(None)
