"""Lifecycle timing on trio's MockClock: keepalive and reconnect backoff at exact virtual times.

The in-memory transport waits on nothing outside the event loop, so with an
autojumping MockClock these tests take milliseconds of real time and check
the timers to the microsecond, instead of sleeping through them.
"""

from __future__ import annotations

import random

import anyio
import pytest
from anyio.abc import ByteStream
from trio.testing import MockClock

from callrt import call
from callrt.balancers import Replica, RoundRobin
from callrt.call import ClientOptions
from callrt.protocol import HELLO_SIZE, HelloReply, encode_hello_reply
from callrt.transport.memory import raw_listener
from tests.components import Echo

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param("trio", id="trio+MockClock")])
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


class RecordingBalancer(RoundRobin):
    """Round robin that notes when replicas come and go, in virtual time."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, float]] = []
        self.changed = anyio.Event()

    def add(self, replica: Replica) -> None:
        super().add(replica)
        self._note("add")

    def remove(self, replica: Replica) -> None:
        super().remove(replica)
        self._note("remove")

    def _note(self, what: str) -> None:
        self.events.append((what, anyio.current_time()))
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, what: str, count: int = 1) -> float:
        while sum(1 for w, _ in self.events if w == what) < count:
            await self.changed.wait()
        return [t for w, t in self.events if w == what][count - 1]


async def answer_hello(stream: ByteStream) -> None:
    received = b""
    while len(received) < HELLO_SIZE:
        received += await stream.receive()
    await stream.send(encode_hello_reply(HelloReply(1, 1 << 20)))


async def test_keepalive_drops_a_silent_server_at_interval_plus_timeout() -> None:
    """The server answers the hello, then nothing: the replica leaves the balancer exactly 10 + 5 s later."""
    balancer = RecordingBalancer()
    options = ClientOptions(balancer=balancer, keepalive_interval=10, keepalive_timeout=5)
    with anyio.fail_after(60):
        async with raw_listener(call.memory("silent")) as accepted:
            async with call.connect("memory://silent", options=options):
                stream = await accepted.receive()
                await answer_hello(stream)
                available = await balancer.wait_for("add")
                dropped = await balancer.wait_for("remove")
                assert dropped - available == pytest.approx(15.0, abs=1e-6)


async def test_answered_pings_keep_the_replica() -> None:
    """Against a real (in-memory) server, a quiet client pings every interval and keeps its session."""
    balancer = RecordingBalancer()
    # No health checks: their replies would be traffic, and a connection with traffic needs no pings.
    options = ClientOptions(balancer=balancer, keepalive_interval=10, keepalive_timeout=5, health_interval=None)
    with anyio.fail_after(600):
        async with (
            call.start_server("memory://quiet", Echo()),
            call.connect("memory://quiet", options=options) as client,
        ):
            assert await client.stub(Echo).echo(b"hi") == b"hi"
            (replica,) = client.replicas.values()
            session = replica.session
            assert session is not None
            start = anyio.current_time()
            await anyio.sleep(95)  # virtual: pings at 10, 20, ... 90 s after the last traffic
            assert session.pongs == 9
            assert replica.session is session and balancer.events == [("add", pytest.approx(start, abs=1e-6))]
            assert await client.stub(Echo).echo(b"still") == b"still"


async def test_reconnect_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    """A server that closes every connection during the handshake: attempts back off 10 ms, 20 ms, ... up to 2 s."""
    random.seed(1)
    options = ClientOptions(reconnect_initial_backoff=0.01, reconnect_max_backoff=2.0, keepalive_interval=0)
    attempts: list[float] = []
    with anyio.fail_after(600):
        async with raw_listener(call.memory("refusing")) as accepted:
            async with call.connect("memory://refusing", options=options):
                while len(attempts) < 14:
                    stream = await accepted.receive()
                    attempts.append(anyio.current_time())
                    await stream.aclose()
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    for i, gap in enumerate(gaps):
        nominal = min(2.0, 0.01 * 2**i)
        assert 0.6 * nominal - 1e-6 <= gap <= nominal + 1e-6, (i, gap, nominal)
    assert max(gaps) <= 2.0 + 1e-6 and gaps[-1] >= 1.2 - 1e-6  # capped, and at the cap by the end
