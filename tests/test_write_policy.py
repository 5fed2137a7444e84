"""The asyncio client's write policy, against a transport that records each write.

A lone call leaves at once; calls made while others are in flight leave in one
write at the end of the loop iteration; and the calls made by callers that one
read woke leave together, in one write (not the first alone: it finds no other
call in flight, but the others are about to be made).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import pytest

from callrt.call import ClientOptions
from callrt.endpoints import parse_endpoint
from callrt.keys import make_method_key
from callrt.protocol import FrameDecoder, HelloReply, Request, Response, encode_frame, encode_hello_reply
from callrt.transport._asyncio import ClientProtocol

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = [
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
]
KEY = make_method_key("tests.Writes", "call")


class _RecordingTransport(asyncio.Transport):
    """Keeps the request ids of each write, in order; wakes a waiter on every write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[int]] = []
        self.written = asyncio.Event()

    def write(self, data: Any) -> None:
        decoder = FrameDecoder()
        decoder.receive_data(bytes(data))
        self.writes.append([frame.id for frame in decoder.frames() if isinstance(frame, Request)])
        self.written.set()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


def _session() -> tuple[ClientProtocol, _RecordingTransport]:
    session = ClientProtocol(parse_endpoint("tcp://127.0.0.1:9"), ClientOptions())
    transport = _RecordingTransport()
    session.transport = transport
    session.data_received(encode_hello_reply(HelloReply(1, 1 << 20)))
    return session, transport


async def _written(transport: _RecordingTransport, count: int) -> list[list[int]]:
    """Wait until ``count`` writes were made; returns them."""
    with anyio.fail_after(5):
        while len(transport.writes) < count:
            transport.written.clear()
            await transport.written.wait()
    return transport.writes[:count]


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_a_lone_call_is_written_at_once(anyio_backend: object) -> None:
    session, transport = _session()
    request_id, _ = session.start(KEY, b"\x90", math.inf, None, None)
    assert transport.writes == [[request_id]]  # before anything else runs


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_calls_made_together_leave_in_one_write(anyio_backend: object) -> None:
    session, transport = _session()
    first, _ = session.start(KEY, b"\x90", math.inf, None, None)
    others = [session.start(KEY, b"\x90", math.inf, None, None)[0] for _ in range(7)]
    assert transport.writes == [[first]]  # the first was alone when it was made
    assert await _written(transport, 2) == [[first], others]  # the rest, at the end of the iteration


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
@pytest.mark.parametrize("flush_queued", [False, True], ids=["idle", "flush-queued"])
async def test_callers_woken_by_one_read_write_their_next_calls_together(
    anyio_backend: object, flush_queued: bool
) -> None:
    """Also when the read comes while a flush is queued: it runs before the woken callers, so it cannot be theirs."""
    session, transport = _session()
    callers = 8
    first_ids: list[int] = []
    second_ids: list[int] = []

    async def caller() -> None:
        request_id, waiter = session.start(KEY, b"\x90", math.inf, None, None)
        first_ids.append(request_id)
        await waiter
        second_ids.append(session.start(KEY, b"\x90", math.inf, None, None)[0])

    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
        first_writes = await _written(transport, 2)  # the first request alone, then the other seven
        if flush_queued:
            # Another call is made and given up at once: its request and cancel are held for a
            # flush queued now, ahead of the wake-ups the read below causes.
            given_up, _ = session.start(KEY, b"\x90", math.inf, None, None)
            session.give_up(given_up, math.inf)
        # Every reply in one read: all callers wake in the same loop iteration.
        session.data_received(b"".join(encode_frame(Response(i, b"\xc0")) for i in first_ids))
        writes = await _written(transport, 4 if flush_queued else 3)
    assert first_writes == [first_ids[:1], first_ids[1:]]
    assert len(second_ids) == callers
    if flush_queued:
        assert writes[2] == [given_up]  # with its cancel
    assert writes[-1] == second_ids  # the woken callers' requests: one write
