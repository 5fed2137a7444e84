"""The asyncio shell's write policy, against a transport that records each write.

A lone call leaves at once; calls made while others are in flight leave in one
write at the end of the loop iteration; and the calls made by callers that one
read woke leave together, in one write (not the first alone: it finds no other
call in flight, but the others are about to be made). While the transport's
buffer is full (``pause_writing``) requests are held, in order, and count as
unsent; where ``writelines`` would copy, large frames go one at a time. A
server answering a long batch of requests writes its replies in two parts.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from typing import Any

import anyio
import msgspec
import pytest

from callrt.call import ClientOptions
from callrt.endpoints import parse_endpoint
from callrt.errors import SessionLost
from callrt.keys import make_method_key
from callrt.protocol import FrameDecoder, HelloReply, Request, Response, encode_frame, encode_hello_reply
from callrt.transport._asyncio import ClientProtocol
from tests.support import ASYNCIO_ONLY

pytestmark = pytest.mark.anyio

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


class _CopyingTransport(_RecordingTransport):
    """Like the default asyncio loop's before Python 3.12, ``writelines`` joins its list (the inherited one).

    Asks its protocol to pause once more than ``high`` bytes are buffered; nothing
    drains until the test says so.
    """

    def __init__(self, protocol: ClientProtocol, high: int) -> None:
        super().__init__()
        self.protocol = protocol
        self.high = high
        self.buffered = 0
        self.sizes: list[int] = []
        self._decoder = FrameDecoder(expect="hello")  # the protocol sends its hello first

    writelines = asyncio.WriteTransport.writelines

    def write(self, data: Any) -> None:
        self.sizes.append(len(data))
        self._decoder.receive_data(bytes(data))
        self.writes.append([frame.id for frame in self._decoder.frames() if isinstance(frame, Request)])
        self.buffered += len(data)
        if self.buffered > self.high:
            self.protocol.pause_writing()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def drain(self) -> None:
        self.buffered = 0
        self.protocol.resume_writing()


def _session() -> tuple[ClientProtocol, _RecordingTransport]:
    protocol = ClientProtocol(parse_endpoint("tcp://127.0.0.1:9"), ClientOptions())
    transport = _RecordingTransport()
    protocol.transport = transport
    protocol.data_received(encode_hello_reply(HelloReply(1, 1 << 20)))
    return protocol, transport


async def _written(transport: _RecordingTransport, count: int) -> list[list[int]]:
    """Wait until ``count`` writes were made; returns them."""
    with anyio.fail_after(5):
        while len(transport.writes) < count:
            transport.written.clear()
            await transport.written.wait()
    return transport.writes[:count]


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_a_lone_call_is_written_at_once(anyio_backend: object) -> None:
    protocol, transport = _session()
    request_id, _ = protocol.session.start(KEY, b"\x90", math.inf, None, None)
    assert transport.writes == [[request_id]]  # before anything else runs


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_calls_made_together_leave_in_one_write(anyio_backend: object) -> None:
    protocol, transport = _session()
    first, _ = protocol.session.start(KEY, b"\x90", math.inf, None, None)
    others = [protocol.session.start(KEY, b"\x90", math.inf, None, None)[0] for _ in range(7)]
    assert transport.writes == [[first]]  # the first was alone when it was made
    assert await _written(transport, 2) == [[first], others]  # the rest, at the end of the iteration


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
@pytest.mark.parametrize("flush_queued", [False, True], ids=["idle", "flush-queued"])
async def test_callers_woken_by_one_read_write_their_next_calls_together(
    anyio_backend: object, flush_queued: bool
) -> None:
    """Also when the read comes while a flush is queued: it runs before the woken callers, so it cannot be theirs."""
    protocol, transport = _session()
    callers = 8
    first_ids: list[int] = []
    second_ids: list[int] = []

    async def caller() -> None:
        request_id, waiter = protocol.session.start(KEY, b"\x90", math.inf, None, None)
        first_ids.append(request_id)
        await waiter
        second_ids.append(protocol.session.start(KEY, b"\x90", math.inf, None, None)[0])

    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
        first_writes = await _written(transport, 2)  # the first request alone, then the other seven
        if flush_queued:
            # Another call is made and given up at once: its request and cancel are held for a
            # flush queued now, ahead of the wake-ups the read below causes.
            given_up, _ = protocol.session.start(KEY, b"\x90", math.inf, None, None)
            protocol.session.give_up(given_up, math.inf)
        # Every reply in one read: all callers wake in the same loop iteration.
        protocol.data_received(b"".join(encode_frame(Response(i, b"\xc0")) for i in first_ids))
        writes = await _written(transport, 4 if flush_queued else 3)
    assert first_writes == [first_ids[:1], first_ids[1:]]
    assert len(second_ids) == callers
    if flush_queued:
        assert writes[2] == [given_up]  # with its cancel
    assert writes[-1] == second_ids  # the woken callers' requests: one write


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_requests_are_held_while_the_transport_is_paused(anyio_backend: object) -> None:
    protocol, transport = _session()
    protocol.pause_writing()
    first, _ = protocol.session.start(
        KEY, b"\x90", math.inf, None, None
    )  # a lone call: written at once, were it not paused
    second, _ = protocol.session.start(KEY, b"\x90", math.inf, None, None)
    await anyio.wait_all_tasks_blocked()  # the end-of-iteration flush has run, and written nothing
    assert transport.writes == []
    protocol.resume_writing()
    assert transport.writes == [[first, second]]  # held in order, then one write


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_requests_held_by_a_pause_fail_as_never_sent(anyio_backend: object) -> None:
    """A lost connection fails them with ``sent=False``: retrying them cannot run them twice."""
    protocol, transport = _session()
    sent, sent_waiter = protocol.session.start(KEY, b"\x90", math.inf, None, None)
    protocol.pause_writing()
    held, held_waiter = protocol.session.start(KEY, b"\x90", math.inf, None, None)
    await anyio.wait_all_tasks_blocked()
    protocol.connection_lost(None)
    assert transport.writes == [[sent]]
    with pytest.raises(SessionLost) as sent_error:
        await sent_waiter
    with pytest.raises(SessionLost) as held_error:
        await held_waiter
    assert (sent_error.value.sent, held_error.value.sent) == (True, False)


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
async def test_large_requests_go_one_at_a_time_where_writelines_copies(anyio_backend: object) -> None:
    """Each resume hands over one large request (header, then payload uncopied) and stops at the next pause."""
    large = b"x" * 200_000  # above the 64 KiB flatten limit: a buffer of its own
    protocol = ClientProtocol(parse_endpoint("tcp://127.0.0.1:9"), ClientOptions())
    transport = _CopyingTransport(protocol, high=100_000)
    protocol.connection_made(transport)  # sends the hello
    protocol.data_received(encode_hello_reply(HelloReply(1, 1 << 20)))
    transport.writes.clear()
    transport.sizes.clear()
    transport.buffered = 0
    ids = [protocol.session.start(KEY, large, math.inf, None, None)[0] for _ in range(3)]
    rounds = [transport.writes[:]]
    for _ in range(2):
        transport.writes.clear()
        transport.drain()
        rounds.append(transport.writes[:])
    assert rounds == [[[], [ids[0]]], [[], [ids[1]]], [[], [ids[2]]]]  # header, then payload, per resume
    assert max(transport.sizes) == len(large)  # no write carried more than one payload


# -- the server's side -------------------------------------------------------


class _ServerTransport(_RecordingTransport):
    """Keeps the response ids of each write (after the hello reply); says it is TLS when ``tls``."""

    def __init__(self, tls: bool) -> None:
        super().__init__()
        self._decoder = FrameDecoder(expect="hello_reply")
        self._extra = {"sslcontext": ssl.create_default_context()} if tls else {}

    def write(self, data: Any) -> None:
        self._decoder.receive_data(bytes(data))
        self.writes.append([frame.id for frame in self._decoder.frames() if isinstance(frame, Response)])

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


@pytest.mark.parametrize("anyio_backend", ASYNCIO_ONLY)
@pytest.mark.parametrize(
    ("split_replies_above", "tls", "expected"),
    [(16, False, [32, 32]), (40, False, [40, 24]), (64, False, [64]), (0, False, [64]), (16, True, [64])],
)
async def test_a_long_batch_of_replies_leaves_in_two_writes(
    anyio_backend: object, split_replies_above: int, tls: bool, expected: list[int]
) -> None:
    """64 requests in one read, answered inline: above ``split_replies_above`` their replies leave in two
    writes, the first half at once (so the client can work on it while the server makes the rest; at
    least ``split_replies_above`` of them), in order; 0: in one write. Over TLS, where each write
    would be a record, in one write."""
    from callrt import call
    from callrt.protocol import Hello, encode_hello
    from callrt.transport._asyncio import ServerProtocol
    from tests.components import Echo

    echo = make_method_key("tests.Echo", "echo")
    options = call.ServerOptions(split_replies_above=split_replies_above)
    async with call.start_server("memory://split-replies", Echo(), options=options) as server:
        protocol = ServerProtocol(server)
        transport = _ServerTransport(tls)
        protocol.connection_made(transport)
        protocol.data_received(encode_hello(Hello(1, 2, 1 << 20)))
        transport.writes.clear()  # the hello reply
        requests = [Request(i, echo, msgspec.msgpack.encode([b"x"])) for i in range(1, 65)]
        protocol.data_received(b"".join(encode_frame(r) for r in requests))
        await anyio.lowlevel.checkpoint()  # a scheduled flush, if any
        protocol.connection_lost(None)
    assert [len(ids) for ids in transport.writes] == expected
    assert [i for ids in transport.writes for i in ids] == list(range(1, 65))


def test_split_replies_above_is_0_or_more() -> None:
    from callrt import call

    with pytest.raises(ValueError, match="split_replies_above"):
        call.ServerOptions(split_replies_above=-1)
