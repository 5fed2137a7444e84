"""The client's replica lifecycle, resolver watch, picking and retries, against real servers.

The substance of Service Weaver's ``internal/net/call`` client tests (changing
endpoints, draining and its variants, unhealthy endpoints, reconnects, partial
failure, many endpoint changes, resolver errors), YARPC's choose semantics
(wait for a replica until the deadline, a default wait without one, fail fast),
and the Weaver bugs we must not have: a re-added address left unused, a stale
connection's failure tearing down the new one, no keepalive.

Servers are worker processes (``tests.lifecycle_components:Who``, named by
their environment) or, for peers that must misbehave exactly, a
:class:`~tests.lifecycle_components.FakeServer` on a real socket in the test's
loop. Waits on processes and sockets poll a condition with a deadline.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from callrt import call
from callrt.balancers import Balancer, BalancerFunc, FewestPending, RoundRobin
from callrt.call import Connection
from callrt.client import ReplicaState
from callrt.connection.client import ClientSession
from callrt.context import CallOptions
from callrt.endpoints import Endpoint, tcp
from callrt.errors import ClosedError, CommunicationError, RemoteError, Unreachable
from callrt.options import ClientOptions
from callrt.protocol import GoAway
from callrt.resolvers import ConstantResolver, Resolver
from callrt.testing import ManualResolver, ResolverError, WorkerProcess

from .lifecycle_components import FakeServer, Who

pytestmark = pytest.mark.anyio

WHO = "tests.lifecycle_components:Who"
AVAILABLE, CONNECTING, DRAINING, UNAVAILABLE = (
    ReplicaState.AVAILABLE,
    ReplicaState.CONNECTING,
    ReplicaState.DRAINING,
    ReplicaState.UNAVAILABLE,
)


# -- servers -----------------------------------------------------------------


def worker(name: str, address: str = "tcp://127.0.0.1:0", *, backend: str = "asyncio", **env: str) -> WorkerProcess:
    return WorkerProcess(address, [WHO], backend=backend, env={"LIFECYCLE_NAME": name, **env})


@pytest.fixture(scope="module")
def stable() -> Iterator[dict[str, Endpoint]]:
    """Three long-lived replicas named a, b, c (c's server runs on trio). Tests must not stop them."""
    procs = {"a": worker("a"), "b": worker("b"), "c": worker("c", backend="trio")}
    try:
        for p in procs.values():
            p.start()
        yield {name: p.endpoint for name, p in procs.items() if p.endpoint is not None}
    finally:
        for p in procs.values():
            p.kill()


class Workers:
    """Per-test workers, killed at the end (and resumed first, if a test stopped one with SIGSTOP)."""

    def __init__(self) -> None:
        self.procs: list[WorkerProcess] = []

    def new(self, name: str, address: str = "tcp://127.0.0.1:0", **kw: Any) -> WorkerProcess:
        p = worker(name, address, **kw)
        self.procs.append(p)
        return p

    async def start(self, name: str, address: str = "tcp://127.0.0.1:0", **kw: Any) -> WorkerProcess:
        p = self.new(name, address, **kw)
        await anyio.to_thread.run_sync(p.start)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
            p.kill()


@pytest.fixture
def workers() -> Iterator[Workers]:
    w = Workers()
    try:
        yield w
    finally:
        w.cleanup()


def dead_endpoint() -> Endpoint:
    """A loopback port nothing listens on: dials are refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return tcp(f"127.0.0.1:{port}")


# -- waiting -----------------------------------------------------------------


async def wait_until(pred: Callable[[], object], what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll ``pred`` until it holds; fail the test after ``timeout`` seconds.

    Polling, not events: what is awaited happens in other processes and sockets.
    """
    with anyio.move_on_after(timeout):
        while not pred():  # noqa: ASYNC110
            await anyio.sleep(0.005)
        return
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def state(conn: Connection, endpoint: Endpoint) -> ReplicaState | None:
    replica = conn.replicas.get(endpoint)
    return None if replica is None else replica.state


async def wait_available(conn: Connection, *endpoints: Endpoint, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    await wait_until(
        lambda: all(state(conn, e) is AVAILABLE for e in endpoints), f"{list(map(str, endpoints))} available", timeout
    )


def session_of(conn: Connection, endpoint: Endpoint) -> ClientSession:
    session = conn.replicas[endpoint].session
    assert session is not None
    return session


# -- a balancer that checks what the client tells it ----------------------------


class AuditBalancer(Balancer):
    """Wraps a balancer; records every violation of the client's side of the contract.

    Only AVAILABLE replicas with a session may be added; only added ones
    removed; no call may re-enter the balancer; every pick must be a member
    that is AVAILABLE. Violations are recorded, not raised: raising here
    would fail the client, not the test.
    """

    def __init__(self, inner: Balancer | None = None) -> None:
        self.inner = inner if inner is not None else RoundRobin()
        self.members: set[Any] = set()
        self.ever_added: set[Endpoint] = set()
        self.removed: list[Endpoint] = []
        self.violations: list[str] = []
        self._inside = False

    def _enter(self, what: str) -> None:
        if self._inside:
            self.violations.append(f"re-entered by {what}")
        self._inside = True

    def add(self, replica: Any) -> None:
        self._enter("add")
        try:
            if replica.state is not AVAILABLE or replica.session is None:
                self.violations.append(f"add of {replica!r}")
            if replica in self.members:
                self.violations.append(f"add twice of {replica!r}")
            self.members.add(replica)
            self.ever_added.add(replica.endpoint)
            self.inner.add(replica)
        finally:
            self._inside = False

    def remove(self, replica: Any) -> None:
        self._enter("remove")
        try:
            if replica not in self.members:
                self.violations.append(f"remove of a non-member {replica!r}")
            self.members.discard(replica)
            self.removed.append(replica.endpoint)
            self.inner.remove(replica)
        finally:
            self._inside = False

    def pick(self, options: CallOptions | None) -> Any:
        self._enter("pick")
        try:
            replica = self.inner.pick(options)
            if replica is not None and (replica not in self.members or replica.state is not AVAILABLE):
                self.violations.append(f"picked {replica!r}")
            return replica
        finally:
            self._inside = False


def prefer(endpoint: Endpoint) -> BalancerFunc:
    """Pick ``endpoint`` whenever it is available, else the first replica."""

    def pick(replicas: Sequence[Any], options: CallOptions | None) -> Any:
        return next((r for r in replicas if r.endpoint == endpoint), replicas[0])

    return BalancerFunc(pick)


def resolver_kinds() -> list[Any]:
    return [pytest.param(ConstantResolver, id="constant"), pytest.param(ManualResolver, id="manual")]


# -- the test resolver keeps the contract it is used to test ------------------------------------


async def test_manual_resolver_contract() -> None:
    """resolve(None) answers at once; resolve(current) blocks until set(); an old version answers at once."""
    resolver = ManualResolver(["tcp://127.0.0.1:1"])
    assert not resolver.is_constant()
    endpoints, v1 = await resolver.resolve(None)
    assert list(endpoints) == [tcp("127.0.0.1:1")] and v1 == "1"
    got: list[tuple[Sequence[Endpoint], str | None]] = []
    async with anyio.create_task_group() as tg:

        async def blocked() -> None:
            got.append(await resolver.resolve(v1))

        tg.start_soon(blocked)
        await anyio.wait_all_tasks_blocked()
        assert not got and resolver.waiting == 1
        v2 = resolver.set(["tcp://127.0.0.1:2"])
    assert got == [((tcp("127.0.0.1:2"),), v2)] and v2 != v1
    assert await resolver.resolve(v1) == ((tcp("127.0.0.1:2"),), v2)  # already newer: no wait
    resolver.fail_next(2)
    for _ in range(2):
        with pytest.raises(ResolverError):
            await resolver.resolve(v1)
    assert await resolver.resolve(v1) == ((tcp("127.0.0.1:2"),), v2)
    assert resolver.calls == 6 and resolver.errors_raised == 2 and resolver.versions_asked == [None, v1, v1, v1, v1, v1]


async def test_manual_resolver_poll_interval_means_ask_again_later() -> None:
    resolver = ManualResolver(["tcp://127.0.0.1:1"], poll_interval=0.05)
    _, version = await resolver.resolve(None)
    with anyio.fail_after(2):
        assert await resolver.resolve(version) == ((tcp("127.0.0.1:1"),), version)  # the same version


# -- endpoints and resolver changes (Weaver: TestMultipleEndpoints, TestChangingEndpoints, ...) ----


@pytest.mark.parametrize("make_resolver", resolver_kinds())
async def test_multiple_endpoints_round_robin(
    stable: dict[str, Endpoint], make_resolver: Callable[..., Resolver]
) -> None:
    eps = [stable[n] for n in "abc"]
    async with call.connect(make_resolver(eps)) as conn:
        await wait_available(conn, *eps)
        who = conn.stub(Who)
        names = [await who.name() for _ in range(9)]
    assert Counter(names) == {"a": 3, "b": 3, "c": 3}
    assert names[:3] == names[3:6] == names[6:], names  # each in turn


async def test_changing_endpoints(stable: dict[str, Endpoint]) -> None:
    resolver = ManualResolver()
    async with call.connect(resolver) as conn:
        who = conn.stub(Who)
        for name in "abc":
            resolver.set([stable[name]])
            with anyio.fail_after(10):
                while await who.name() != name:
                    pass
        # The earlier replicas were dropped, not kept around.
        await wait_until(lambda: set(conn.replicas) == {stable["c"]}, "only c left")


async def test_endpoints_retained_across_changes(stable: dict[str, Endpoint]) -> None:
    """{a} then {a, b}: the connection to a is kept (same session, never left AVAILABLE)."""
    audit = AuditBalancer()
    resolver = ManualResolver([stable["a"]])
    async with call.connect(resolver, options=ClientOptions(balancer=audit)) as conn:
        who = conn.stub(Who)
        assert await who.name() == "a"
        first = session_of(conn, stable["a"])
        resolver.set([stable["a"], stable["b"]])
        with anyio.fail_after(10):
            while await who.name() != "b":
                pass
        resolver.set([stable["b"], stable["a"]])  # a new version, same set
        await resolver.wait_for_waiters()
        assert {await who.name() for _ in range(4)} == {"a", "b"}
        assert session_of(conn, stable["a"]) is first and not first.lost.is_set()
        assert stable["a"] not in audit.removed
    assert audit.violations == []


async def test_no_endpoints_constant() -> None:
    with pytest.raises(Unreachable, match="no endpoints"):
        async with call.connect(ConstantResolver([])):
            pytest.fail("connect must not succeed")  # pragma: no cover


async def test_no_endpoints_non_constant(stable: dict[str, Endpoint]) -> None:
    """No endpoints is fine for a resolver that may have some later; calls meanwhile are Unreachable."""
    resolver = ManualResolver()
    async with call.connect(resolver, options=ClientOptions(pick_timeout=0.2)) as conn:
        who = conn.stub(Who)
        with pytest.raises(Unreachable, match="no endpoints"):
            await who.name()
        resolver.set([stable["a"]])
        with anyio.fail_after(10):
            assert await who.name() == "a"
        resolver.set([])
        await wait_until(lambda: not conn.replicas, "a dropped")
        with pytest.raises(Unreachable, match="no endpoints"):
            await who.name()


# -- draining (Weaver: TestDraining, TestNoActiveDraining, TestCloseDraining, TestRememberDraining,
#    TestRefreshDraining) -------------------------------------------------------------------------


async def test_draining_lets_calls_finish_then_closes(stable: dict[str, Endpoint]) -> None:
    """A removed endpoint drains: its calls in flight finish there, new calls go elsewhere, then it closes."""
    a, b = stable["a"], stable["b"]
    resolver = ManualResolver([a])
    results: list[str] = []
    async with call.connect(resolver) as conn:
        who = conn.stub(Who)
        await wait_available(conn, a)
        old = session_of(conn, a)
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                results.append(await who.nap(0.5))

            for _ in range(5):
                tg.start_soon(long_call)
            await wait_until(lambda: conn.replicas[a].pending == 5, "5 calls in flight on a")
            resolver.set([b])
            await wait_until(lambda: state(conn, a) is DRAINING, "a draining")
            with anyio.fail_after(5):
                assert {await who.name() for _ in range(5)} == {"b"}
            assert conn.replicas[a].pending == 5 and not old.lost.is_set()
        assert results == ["a"] * 5
        # Drained: the connection closes and the replica is forgotten.
        await wait_until(lambda: a not in conn.replicas, "drained a forgotten", timeout=5)
        assert old.lost.is_set()


async def test_draining_without_calls_closes_at_once(stable: dict[str, Endpoint]) -> None:
    a, b = stable["a"], stable["b"]
    resolver = ManualResolver([a])
    async with call.connect(resolver) as conn:
        who = conn.stub(Who)
        assert await who.name() == "a"
        old = session_of(conn, a)
        resolver.set([b])
        await wait_until(lambda: a not in conn.replicas and old.lost.is_set(), "a closed", timeout=5)
        assert await who.name() == "b"


async def test_close_fails_calls_on_draining_replicas(stable: dict[str, Endpoint]) -> None:
    """Closing the connection ends its calls in flight promptly, draining replicas included."""
    a, b = stable["a"], stable["b"]
    resolver = ManualResolver([a])
    errors: list[BaseException] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with call.connect(resolver) as conn:
                who = conn.stub(Who)
                await wait_available(conn, a)

                async def long_call() -> None:
                    try:
                        await who.nap(30)
                    except Exception as exc:
                        errors.append(exc)

                tg.start_soon(long_call)
                await wait_until(lambda: conn.replicas[a].pending == 1, "call in flight on a")
                resolver.set([b])
                await wait_until(lambda: state(conn, a) is DRAINING and state(conn, b) is AVAILABLE, "a draining")
            started = time.monotonic()
        assert time.monotonic() - started < 1.0
    assert len(errors) == 1 and isinstance(errors[0], (ClosedError, CommunicationError)), errors
    with pytest.raises(ClosedError):
        await who.name()


async def test_draining_replicas_are_remembered(stable: dict[str, Endpoint]) -> None:
    """{a} → {b} → {c} with calls on a: a keeps draining through both changes and its calls succeed."""
    a, b, c = stable["a"], stable["b"], stable["c"]
    resolver = ManualResolver([a])
    results: list[str] = []
    async with call.connect(resolver) as conn:
        who = conn.stub(Who)
        await wait_available(conn, a)
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                results.append(await who.nap(0.6))

            for _ in range(3):
                tg.start_soon(long_call)
            await wait_until(lambda: conn.replicas[a].pending == 3, "calls in flight on a")
            resolver.set([b])
            with anyio.fail_after(5):
                while await who.name() != "b":
                    pass
            resolver.set([c])
            with anyio.fail_after(5):
                while await who.name() != "c":
                    pass
            await wait_until(lambda: b not in conn.replicas, "b (idle) closed")
            assert state(conn, a) is DRAINING and conn.replicas[a].pending == 3
        assert results == ["a"] * 3
        await wait_until(lambda: set(conn.replicas) == {c}, "a closed once drained", timeout=5)


async def test_readded_while_draining_is_used_again(stable: dict[str, Endpoint]) -> None:
    """Weaver's bug: an address removed and re-added while its connection drains must be used again.

    Its connection is revived (the same session), not left draining until its
    longest call ends, and not forgotten.
    """
    a, b = stable["a"], stable["b"]
    audit = AuditBalancer()
    resolver = ManualResolver([a])
    async with call.connect(resolver, options=ClientOptions(balancer=audit)) as conn:
        who = conn.stub(Who)
        await wait_available(conn, a)
        old = session_of(conn, a)
        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def long_call() -> None:
                results.append(await who.nap(1.2))

            tg.start_soon(long_call)
            await wait_until(lambda: conn.replicas[a].pending == 1, "call in flight on a")
            resolver.set([b])
            await wait_until(lambda: state(conn, a) is DRAINING, "a draining")
            resolver.set([a, b])
            # Well before the long call ends, new calls reach a again, on the same connection.
            with anyio.fail_after(0.6):
                while await who.name() != "a":
                    pass
            assert session_of(conn, a) is old and not old.lost.is_set()
            assert state(conn, a) is AVAILABLE
        assert results == ["a"]
        # Revived for good: no late drain closes it after its last call.
        assert {await who.name() for _ in range(4)} == {"a", "b"}
        assert session_of(conn, a) is old and not old.lost.is_set()
    assert audit.violations == []


async def test_readded_after_drained_is_used_again(stable: dict[str, Endpoint]) -> None:
    a, b = stable["a"], stable["b"]
    resolver = ManualResolver([a])
    async with call.connect(resolver) as conn:
        who = conn.stub(Who)
        assert await who.name() == "a"
        resolver.set([b])
        await wait_until(lambda: a not in conn.replicas, "a closed")
        resolver.set([a, b])
        with anyio.fail_after(5):
            while await who.name() != "a":
                pass


async def test_goaway_drains_in_flight_calls_and_moves_new_ones(stable: dict[str, Endpoint], workers: Workers) -> None:
    """A server shutting down (SIGTERM → goaway): its replica drains; nothing is lost or failed."""
    d = await workers.start("d")
    assert d.endpoint is not None
    b = stable["b"]
    audit = AuditBalancer(prefer(d.endpoint))
    async with call.connect(ConstantResolver([d.endpoint, b]), options=ClientOptions(balancer=audit)) as conn:
        who = conn.stub(Who)
        await wait_available(conn, d.endpoint, b)
        results: list[str] = []
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                results.append(await who.nap(0.5))

            for _ in range(4):
                tg.start_soon(long_call)
            await wait_until(lambda: conn.replicas[d.endpoint].pending == 4, "calls in flight on d")
            assert d.proc is not None
            d.proc.send_signal(signal.SIGTERM)
            await wait_until(lambda: state(conn, d.endpoint) is DRAINING, "d draining after goaway")
            with anyio.fail_after(5):
                assert {await who.name() for _ in range(6)} == {"b"}
        assert results == ["d"] * 4
        await wait_until(lambda: d.proc is not None and d.proc.poll() is not None, "d exited", timeout=10)
        assert d.proc.returncode == 0
        await wait_until(lambda: state(conn, d.endpoint) in (CONNECTING, UNAVAILABLE), "d not available")
        assert {await who.name() for _ in range(4)} == {"b"}
    assert audit.violations == []


# -- unhealthy endpoints, reconnects, partial failure ---------------------------------------------


async def test_initially_unhealthy_endpoint_is_never_picked(stable: dict[str, Endpoint]) -> None:
    """A server that accepts but never finishes the handshake stays CONNECTING and gets no call."""
    a = stable["a"]
    audit = AuditBalancer()
    async with FakeServer("mute") as mute:
        assert mute.endpoint is not None
        options = ClientOptions(balancer=audit, handshake_timeout=0.2, reconnect_initial_backoff=0.01)
        async with call.connect(ConstantResolver([mute.endpoint, a]), options=options) as conn:
            who = conn.stub(Who)
            await wait_available(conn, a)
            assert state(conn, mute.endpoint) in (CONNECTING, UNAVAILABLE)
            assert [await who.name() for _ in range(20)] == ["a"] * 20
            # The handshake timed out and was tried again.
            await wait_until(lambda: len(mute.accepted) >= 2 and mute.accepted[0][1] is not None, "a second dial")
            assert state(conn, mute.endpoint) in (CONNECTING, UNAVAILABLE)
    assert mute.endpoint not in audit.ever_added
    assert audit.violations == []


async def test_endpoint_removed_during_handshake(stable: dict[str, Endpoint]) -> None:
    """An endpoint dropped by the resolver while its handshake is under way is closed, not picked."""
    a = stable["a"]
    audit = AuditBalancer()
    async with FakeServer("gated") as slow:
        assert slow.endpoint is not None and slow.gate is not None
        resolver = ManualResolver([slow.endpoint, a])
        async with call.connect(resolver, options=ClientOptions(balancer=audit)) as conn:
            who = conn.stub(Who)
            await wait_until(lambda: slow.hellos == 1, "handshake under way")
            resolver.set([a])
            await wait_until(lambda: not conn.replicas[slow.endpoint].wanted, "slow endpoint dropped")
            slow.gate.set()  # the handshake completes after the endpoint went away
            await wait_until(lambda: slow.endpoint not in conn.replicas, "slow endpoint forgotten")
            assert [await who.name() for _ in range(5)] == ["a"] * 5
    assert slow.endpoint not in audit.ever_added
    assert audit.violations == []


async def test_closing_during_a_handshake_closes_its_socket() -> None:
    """A connection closed while a replica's handshake is under way leaves no socket open behind it."""
    async with FakeServer("mute") as mute:
        assert mute.endpoint is not None
        async with call.connect(ConstantResolver([mute.endpoint])) as conn:
            await wait_until(lambda: mute.hellos == 1, "handshake under way")
            assert state(conn, mute.endpoint) is CONNECTING
        # The server sees the client's end of the socket close (not left to the garbage collector).
        await wait_until(lambda: mute.accepted[0][1] is not None, "the socket closed", timeout=2)


@pytest.mark.parametrize("make_resolver", resolver_kinds())
async def test_reconnect_after_the_server_dies(make_resolver: Callable[..., Resolver], workers: Workers) -> None:
    """A replica killed and restarted on the same address is reconnected; calls made meanwhile wait for it."""
    d = await workers.start("d0")
    assert d.endpoint is not None
    ep = d.endpoint
    async with call.connect(make_resolver([ep]), options=ClientOptions(reconnect_max_backoff=0.2)) as conn:
        who = conn.stub(Who)
        assert await who.name() == "d0"
        for i in range(1, 4):
            old = session_of(conn, ep)
            await anyio.to_thread.run_sync(d.kill)
            await wait_until(lambda old=old: old.lost.is_set() and state(conn, ep) is not AVAILABLE, "loss noticed")
            got: list[str] = []
            async with anyio.create_task_group() as tg:

                async def waiting_call(got: list[str] = got) -> None:
                    with anyio.fail_after(10):
                        got.append(await who.name())

                tg.start_soon(waiting_call)
                d = await workers.start(f"d{i}", str(ep))
            assert got == [f"d{i}"]
            assert session_of(conn, ep) is not old


async def test_reconnect_backoff_is_capped_jittered_and_reset_by_a_handshake() -> None:
    """Failed dials back off exponentially with jitter up to the cap; a successful handshake resets it."""
    initial, cap = 0.01, 0.15
    fails = 8
    async with FakeServer(*(["close"] * fails), "hold", "close", hold=0.05) as fake:
        assert fake.endpoint is not None
        options = ClientOptions(reconnect_initial_backoff=initial, reconnect_max_backoff=cap)
        async with call.connect(ConstantResolver([fake.endpoint]), options=options):
            await wait_until(lambda: len(fake.accepted) >= fails + 3, "the scripted dials", timeout=10)
        times = [(opened, closed) for opened, closed in fake.accepted]
    assert all(closed is not None for _, closed in times)
    gaps = [times[i + 1][0] - times[i][1] for i in range(len(times) - 1)]  # type: ignore[operator]
    expected = [min(cap, initial * 2**k) for k in range(fails)]
    print("reconnect gaps (s):", [round(g, 3) for g in gaps], "expected ceilings:", expected)
    for k in range(fails):
        # Never shorter than the jitter floor; not much longer than the ceiling.
        assert 0.6 * expected[k] - 0.003 <= gaps[k] <= expected[k] + 0.25, (k, gaps)
    assert max(gaps[:fails]) <= cap + 0.25  # capped: uncapped, the 8th wait would be at least 0.77 s
    capped = gaps[4:fails]
    assert max(capped) - min(capped) > 0.002, "waits at the cap should be jittered"
    # Connection fails+1 completed its handshake (then the server closed it): the next wait starts over.
    assert gaps[fails] < 0.6 * cap - 0.01, gaps


@pytest.mark.parametrize("make_resolver", resolver_kinds())
async def test_partial_failure(stable: dict[str, Endpoint], make_resolver: Callable[..., Resolver]) -> None:
    """A dead endpoint next to a live one: every call goes to the live one and succeeds."""
    dead, a = dead_endpoint(), stable["a"]
    audit = AuditBalancer()
    async with call.connect(make_resolver([dead, a]), options=ClientOptions(balancer=audit)) as conn:
        who = conn.stub(Who)
        assert [await who.name() for _ in range(10)] == ["a"] * 10
        assert state(conn, dead) in (CONNECTING, UNAVAILABLE)
        assert conn.retry_counts["retries"] == 0
    assert audit.ever_added == {a}
    assert audit.violations == []


async def test_many_endpoint_changes(stable: dict[str, Endpoint]) -> None:
    """Concurrent calls while the resolver changes the set 25 times, unhealthy endpoints included."""
    audit = AuditBalancer(FewestPending(seed=7))
    async with FakeServer("mute") as mute:
        assert mute.endpoint is not None
        pool = [stable["a"], stable["b"], stable["c"], dead_endpoint(), mute.endpoint]
        resolver = ManualResolver(pool)
        rng = __import__("random").Random(1)
        options = ClientOptions(balancer=audit, handshake_timeout=0.2)
        done = 0
        outcomes: Counter[str] = Counter()
        async with call.connect(resolver, options=options) as conn:
            who = conn.stub(Who)
            stop = anyio.Event()
            progress = anyio.Event()

            async def caller() -> None:
                nonlocal done, progress
                while not stop.is_set():
                    try:
                        with anyio.fail_after(0.25):  # a call waits for a replica until its deadline
                            outcomes[await who.name()] += 1
                    except (Unreachable, TimeoutError):
                        outcomes["no replica"] += 1
                    done += 1
                    progress.set()
                    progress = anyio.Event()

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(5):
                        tg.start_soon(caller)
                    for _ in range(25):
                        target = done + 10
                        while done < target:
                            await progress.wait()
                        resolver.set(rng.sample(pool, rng.randrange(len(pool) + 1)))
                    stop.set()
            resolver.set(pool[:3])
            await wait_until(
                lambda: (
                    all(e in conn.replicas and conn.replicas[e].state is ReplicaState.AVAILABLE for e in pool[:3])
                    and len(conn.replicas) <= 5
                ),
                "settled",
            )
            assert {await who.name() for _ in range(12)} == {"a", "b", "c"}
            await wait_until(lambda: all(r.pending == 0 for r in conn.replicas.values()), "no calls in flight")
    print("many endpoint changes:", dict(outcomes))
    assert sum(outcomes.values()) >= 250
    assert mute.endpoint not in audit.ever_added
    assert audit.violations == []


# -- the resolver watch ----------------------------------------------------------------------------


async def test_resolver_errors_are_retried_with_backoff(stable: dict[str, Endpoint]) -> None:
    """A resolver that fails N times then works: the connection lives on and follows it."""
    a, b = stable["a"], stable["b"]
    resolver = ManualResolver([a])
    async with call.connect(resolver) as conn:
        who = conn.stub(Who)
        assert await who.name() == "a"
        with anyio.fail_after(5):
            await resolver.wait_for_waiters()
        resolver.fail_next(5)
        first_failing = resolver.calls + 1  # the woken watch asks again at once, and fails
        resolver.set([a, b])
        # It fails 5 times, then blocks on the new version.
        await wait_until(lambda: resolver.failures_pending == 0 and resolver.waiting == 1, "the watch blocked again")
        assert resolver.errors_raised == 5
        assert resolver.versions_asked[-1] == resolver.version
        # Calls went on working throughout, and the update made before the errors is in force.
        with anyio.fail_after(5):
            while await who.name() != "b":
                pass
        times = resolver.wall_times[first_failing - 1 :]
        gaps = [t2 - t1 for t1, t2 in zip(times, times[1:], strict=False)]
        print("resolver retry gaps (s):", [round(g, 4) for g in gaps])
        assert len(gaps) == 5
        for k, gap in enumerate(gaps):
            assert gap >= 0.6 * 0.01 * 2**k - 0.002, gaps  # backed off, growing
        assert gaps[-1] > 2 * gaps[0]
        # And it follows later changes too.
        resolver.set([b])
        await wait_until(lambda: a not in conn.replicas, "a dropped")


def _virtual_clock() -> Any:
    from trio.testing import MockClock

    return MockClock(autojump_threshold=0)  # time jumps to the next deadline whenever all tasks wait


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": _virtual_clock()}), id="trio-virtual-clock")]
)
async def test_resolver_error_backoff_is_capped_and_reset() -> None:
    """On a virtual clock: 14 failures in a row back off from 10 ms, doubling, jittered, capped at 5 s.

    A success resets the backoff.
    """
    resolver = ManualResolver()
    async with call.connect(resolver) as conn:
        await resolver.wait_for_waiters()
        resolver.fail_next(14)
        first_failing = resolver.calls + 1
        resolver.set([])
        await wait_until(lambda: resolver.failures_pending == 0 and resolver.waiting == 1, "failures done", 100)
        times = resolver.call_times[first_failing - 1 :]
        gaps = [t2 - t1 for t1, t2 in zip(times, times[1:], strict=False)]
        assert len(gaps) == 14
        for k, gap in enumerate(gaps):
            ceiling = min(5.0, 0.01 * 2**k)
            assert 0.6 * ceiling - 1e-6 <= gap <= ceiling + 1e-6, (k, gaps)
        assert max(gaps) <= 5.0 + 1e-6 and min(gaps[10:]) >= 3.0  # at the cap, jittered below it
        # A successful resolve starts the backoff over.
        resolver.fail_next(2)
        first_failing = resolver.calls + 1
        resolver.set([])
        await wait_until(lambda: resolver.failures_pending == 0 and resolver.waiting == 1, "failures done", 100)
        times = resolver.call_times[first_failing - 1 :]
        gaps = [t2 - t1 for t1, t2 in zip(times, times[1:], strict=False)]
        assert len(gaps) == 2 and gaps[0] <= 0.01 + 1e-6 and gaps[1] <= 0.02 + 1e-6, gaps
        assert not conn.replicas


async def test_resolver_first_resolve_failing_does_not_prevent_connect(stable: dict[str, Endpoint]) -> None:
    """A non-constant resolver failing at start-up: connect() works and the client keeps asking."""
    resolver = ManualResolver([stable["a"]])
    resolver.fail_next(3)
    async with call.connect(resolver, options=ClientOptions(pick_timeout=5)) as conn:
        who = conn.stub(Who)
        with anyio.fail_after(5):
            assert await who.name() == "a"
        assert resolver.errors_raised == 3
        assert set(conn.replicas) == {stable["a"]}


async def test_same_version_means_ask_again_later(stable: dict[str, Endpoint]) -> None:
    """A resolver answering "nothing new" at once is asked again with backoff, not in a hot loop."""
    resolver = ManualResolver([stable["a"]], poll_interval=0)
    async with call.connect(resolver) as conn:
        who = conn.stub(Who)
        assert await who.name() == "a"
        start = resolver.calls
        await anyio.sleep(0.5)  # time passing is what is tested here
        asked = resolver.calls - start
        assert 2 <= asked <= 15, asked
        resolver.set([stable["b"]])
        with anyio.fail_after(5):
            while await who.name() != "b":
                pass


# -- picking: YARPC's choose semantics ------------------------------------------------------------


async def test_pick_waits_until_the_deadline(stable: dict[str, Endpoint]) -> None:
    """A call with a deadline waits for a replica until its deadline, even past ``pick_timeout``."""
    resolver = ManualResolver()
    async with call.connect(resolver, options=ClientOptions(pick_timeout=0.1)) as conn:
        who = conn.stub(Who)
        got: list[str] = []
        async with anyio.create_task_group() as tg:

            async def caller() -> None:
                with anyio.fail_after(3):
                    got.append(await who.name())

            started = anyio.current_time()
            tg.start_soon(caller)
            # Well past pick_timeout (and past max_attempts of them): the call must still be waiting.
            await anyio.sleep(0.8)
            assert not got
            resolver.set([stable["a"]])
        assert got == ["a"]
        assert anyio.current_time() - started >= 0.8
        assert conn.retry_counts == {"attempts": 1, "retries": 0}


async def test_pick_without_deadline_waits_pick_timeout(stable: dict[str, Endpoint]) -> None:
    """Without a deadline, a call waits ``pick_timeout`` (once, not once per retry), then Unreachable."""
    resolver = ManualResolver()
    async with call.connect(resolver, options=ClientOptions(pick_timeout=0.3)) as conn:
        who = conn.stub(Who)
        started = anyio.current_time()  # the loop's clock: the one the wait is measured on
        with pytest.raises(Unreachable):
            await who.name()
        waited = anyio.current_time() - started
        assert 0.3 - 0.002 <= waited < 0.3 + 0.4, waited
        # A replica arriving within pick_timeout serves the waiting call.
        got: list[str] = []
        async with anyio.create_task_group() as tg:

            async def caller() -> None:
                got.append(await who.name())

            tg.start_soon(caller)
            await anyio.sleep(0.1)
            resolver.set([stable["a"]])
        assert got == ["a"]


async def test_pick_deadline_shorter_than_pick_timeout() -> None:
    resolver = ManualResolver()
    async with call.connect(resolver, options=ClientOptions(pick_timeout=5)) as conn:
        who = conn.stub(Who)
        started = time.monotonic()
        with pytest.raises((Unreachable, TimeoutError)):
            with anyio.fail_after(0.2):
                await who.name()
        assert time.monotonic() - started < 0.2 + 0.4


async def test_fail_fast(stable: dict[str, Endpoint], workers: Workers) -> None:
    """fail_fast (client-wide or per call) raises Unreachable at once; a per-call False overrides it."""
    resolver = ManualResolver()
    async with call.connect(resolver, options=ClientOptions(fail_fast=True, pick_timeout=5)) as conn:
        who = conn.stub(Who)
        started = time.monotonic()
        with pytest.raises(Unreachable):
            await who.name()
        assert time.monotonic() - started < 0.1
        assert conn.retry_counts["retries"] == 0
        got: list[str] = []
        async with anyio.create_task_group() as tg:

            async def patient() -> None:
                with anyio.fail_after(5):
                    got.append(await who.name.options(CallOptions(fail_fast=False))())

            tg.start_soon(patient)
            await anyio.sleep(0.1)
            resolver.set([stable["a"]])
        assert got == ["a"]
    resolver = ManualResolver()
    async with call.connect(resolver, options=ClientOptions(pick_timeout=5)) as conn:
        who = conn.stub(Who)
        started = time.monotonic()
        with pytest.raises(Unreachable):
            await who.name.options(CallOptions(fail_fast=True))()
        assert time.monotonic() - started < 0.1


async def test_unreachable_says_why(stable: dict[str, Endpoint]) -> None:
    """No endpoints vs endpoints none of which is available (YARPC #1886: clear errors)."""
    dead = dead_endpoint()
    async with call.connect(ConstantResolver([dead]), options=ClientOptions(fail_fast=True)) as conn:
        with pytest.raises(
            Unreachable, match=r"no available replica among 1: tcp://127\.0\.0\.1:\d+ (connecting|unavailable)"
        ):
            await conn.stub(Who).name()


# -- retries -----------------------------------------------------------------------------------------


async def test_retry_counts(stable: dict[str, Endpoint]) -> None:
    """A call whose connection dies after sending is retried elsewhere if retriable, never if not."""
    a = stable["a"]
    async with FakeServer("drop_on_request", once=True) as fake:
        assert fake.endpoint is not None
        async with call.connect(
            ConstantResolver([fake.endpoint, a]), options=ClientOptions(balancer=prefer(fake.endpoint))
        ) as conn:
            await wait_available(conn, fake.endpoint, a)
            who = conn.stub(Who)
            assert await who.nap(0) == "a"
            assert fake.requests == 1
            assert conn.retry_counts == {"attempts": 2, "retries": 1}
            assert await who.name() == "a"  # the fake is gone for good (it listened once)
            assert conn.retry_counts == {"attempts": 3, "retries": 1}
    async with FakeServer("drop_on_request", once=True) as fake:
        assert fake.endpoint is not None
        async with call.connect(
            ConstantResolver([fake.endpoint, a]), options=ClientOptions(balancer=prefer(fake.endpoint))
        ) as conn:
            await wait_available(conn, fake.endpoint, a)
            who = conn.stub(Who)
            with pytest.raises(CommunicationError):
                await who.nap_once(0)  # @not_retriable, and the request was sent
            assert fake.requests == 1
            assert conn.retry_counts == {"attempts": 1, "retries": 0}
            # CallOptions(retry=True) makes even a not-retriable method retriable.
            await wait_until(lambda: state(conn, fake.endpoint) is not AVAILABLE, "fake gone")
            assert await who.nap_once.options(CallOptions(retry=True))(0) == "a"


async def test_application_errors_are_not_retried(stable: dict[str, Endpoint]) -> None:
    async with call.connect(ConstantResolver([stable["a"], stable["b"]])) as conn:
        with pytest.raises(RemoteError, match="boom"):
            await conn.stub(Who).fail("boom")
        assert conn.retry_counts == {"attempts": 1, "retries": 0}


# -- exact pending counts ------------------------------------------------------------------------------


async def test_pending_counts_are_exact(stable: dict[str, Endpoint], workers: Workers) -> None:
    """After many calls — fine, failed, cancelled, timed out, cut off by a dying server — every count is 0."""
    d = await workers.start("d")
    assert d.endpoint is not None
    eps = [stable["a"], stable["b"], stable["c"], d.endpoint]
    fp = FewestPending(seed=3)
    async with call.connect(ConstantResolver(eps), options=ClientOptions(balancer=fp)) as conn:
        who = conn.stub(Who)
        await wait_available(conn, *eps)
        kinds: Counter[str] = Counter()
        max_pending = 0

        async def one(i: int) -> None:
            nonlocal max_pending
            kind = i % 5
            try:
                if kind == 0:
                    await who.name()
                elif kind == 1:
                    with pytest.raises(RemoteError):
                        await who.fail("no")
                elif kind == 2:
                    async with anyio.create_task_group() as inner:  # the caller gives up: a cancel frame
                        inner.start_soon(who.nap, 5)
                        await anyio.sleep(0.01)
                        inner.cancel_scope.cancel()
                elif kind == 3:
                    # The deadline passes (here or on the server); on d, it may leave no time to retry.
                    with pytest.raises((TimeoutError, RemoteError, CommunicationError)):
                        with anyio.fail_after(0.02):
                            await who.nap(5)
                else:
                    await who.nap(0.05)
            finally:
                kinds[str(kind)] += 1
                max_pending = max(max_pending, *(r.pending for r in conn.replicas.values()))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(400):
                    tg.start_soon(one, i)
                    if i == 200:
                        await anyio.to_thread.run_sync(d.kill)  # calls in flight on d are cut off
                    if i % 20 == 19:
                        await anyio.lowlevel.checkpoint()
        for replica in conn.replicas.values():
            session = replica.session
            assert replica.pending == 0, replica
            if session is not None:
                assert not session.calls, replica
    assert sum(kinds.values()) == 400 and max_pending > 0


# -- keepalive -------------------------------------------------------------------------------------------


KEEPALIVE = ClientOptions(keepalive_interval=0.2, keepalive_timeout=0.2, handshake_timeout=0.3)
SLACK = 0.6


async def test_keepalive_finds_a_silent_server() -> None:
    """A server that answers the hello and then goes silent (no FIN, no RST) is found by pings."""
    async with FakeServer("silent", "mute") as fake:
        assert fake.endpoint is not None
        async with call.connect(ConstantResolver([fake.endpoint]), options=KEEPALIVE) as conn:
            await wait_available(conn, fake.endpoint)
            became = anyio.current_time()
            await wait_until(
                lambda: state(conn, fake.endpoint) is not AVAILABLE, "the silent server dropped", timeout=5
            )
            elapsed = anyio.current_time() - became
    print(f"silent server left AVAILABLE after {elapsed:.3f}s (interval+timeout = 0.4s)")
    assert elapsed <= 0.4 + SLACK


async def test_keepalive_finds_a_stopped_worker_and_retries_its_call(
    stable: dict[str, Endpoint], workers: Workers
) -> None:
    """SIGSTOP a worker: the call in flight on it is retried elsewhere once pings go unanswered."""
    d = await workers.start("d")
    assert d.endpoint is not None
    b = stable["b"]
    audit = AuditBalancer(prefer(d.endpoint))
    options = ClientOptions(
        balancer=audit, keepalive_interval=0.2, keepalive_timeout=0.2, handshake_timeout=0.3, reconnect_max_backoff=0.2
    )
    async with call.connect(ConstantResolver([d.endpoint, b]), options=options) as conn:
        who = conn.stub(Who)
        await wait_available(conn, d.endpoint, b)
        assert await who.name() == "d"
        os.kill(d.pid, signal.SIGSTOP)
        started = anyio.current_time()
        with anyio.fail_after(5):
            assert await who.name() == "b"  # sent to d, which never answers; retried on b
        elapsed = anyio.current_time() - started
        print(f"call on a stopped worker retried after {elapsed:.3f}s (interval+timeout = 0.4s)")
        assert elapsed <= 0.4 + SLACK
        assert state(conn, d.endpoint) is not AVAILABLE
        assert conn.retry_counts["retries"] >= 1
        # While stopped, its listener still accepts (the kernel does) but no handshake completes.
        assert {await who.name() for _ in range(5)} == {"b"}
        os.kill(d.pid, signal.SIGCONT)
        await wait_available(conn, d.endpoint, timeout=5)
        assert await who.name() == "d"
    assert audit.violations == []


async def test_keepalive_keeps_a_healthy_idle_connection(stable: dict[str, Endpoint]) -> None:
    """Pings answered in well under a millisecond must count as answered (on every loop's clock)."""
    a = stable["a"]
    options = ClientOptions(keepalive_interval=0.03, keepalive_timeout=0.05)
    async with call.connect(ConstantResolver([a]), options=options) as conn:
        await wait_available(conn, a)
        first = session_of(conn, a)
        with anyio.move_on_after(1.0):
            while True:
                assert state(conn, a) is AVAILABLE and conn.replicas[a].session is first
                await anyio.sleep(0.005)
        assert not first.lost.is_set()


# -- lost connections ------------------------------------------------------------------------------------------


async def test_a_lost_connection_leaves_the_balancer_at_once(stable: dict[str, Endpoint], workers: Workers) -> None:
    """The moment a replica's socket is gone it is no longer picked, before its task next runs.

    Otherwise the retries of the calls it just failed go to it again (a load-aware
    balancer even prefers it: its count is 0) and a burst of calls can use up
    their attempts and the retry budget on a dead replica.
    """
    d = await workers.start("d")
    assert d.endpoint is not None
    audit = AuditBalancer(prefer(d.endpoint))
    async with call.connect(ConstantResolver([d.endpoint, stable["b"]]), options=ClientOptions(balancer=audit)) as conn:
        who = conn.stub(Who)
        await wait_available(conn, d.endpoint, stable["b"])
        old = session_of(conn, d.endpoint)
        d.kill()  # blocking on purpose: the loss arrives while the loop is busy elsewhere
        with anyio.fail_after(5):
            while not old.lost.is_set():
                await anyio.lowlevel.checkpoint()
        assert state(conn, d.endpoint) is UNAVAILABLE
        picked = audit.pick(None)
        assert picked is not None and picked.endpoint == stable["b"]
        assert await who.name() == "b"
        assert conn.retry_counts["retries"] == 0
    assert audit.violations == []


async def test_a_stale_session_failing_does_not_touch_the_new_one(workers: Workers) -> None:
    """After a reconnect, anything that happens to the old session leaves the new one alone (Weaver #5)."""
    d = await workers.start("d0")
    assert d.endpoint is not None
    ep = d.endpoint
    async with call.connect(ConstantResolver([ep]), options=ClientOptions(reconnect_max_backoff=0.1)) as conn:
        who = conn.stub(Who)
        assert await who.name() == "d0"
        old = session_of(conn, ep)
        await anyio.to_thread.run_sync(d.kill)
        d = await workers.start("d1", str(ep))
        await wait_until(lambda: state(conn, ep) is AVAILABLE and conn.replicas[ep].session is not old, "reconnected")
        new = session_of(conn, ep)
        async with anyio.create_task_group() as tg:
            got: list[str] = []

            async def long_call() -> None:
                got.append(await who.nap(0.3))

            tg.start_soon(long_call)
            await wait_until(lambda: new.pending == 1, "a call in flight on the new session")
            # Late failures of the old session, in every form they can take.
            old.connection_lost(CommunicationError("late failure of the old socket"))
            old.abort(CommunicationError("late abort"))
            old.frame_received(GoAway("late goaway"))
            with pytest.raises(CommunicationError):
                old.start(b"\0" * 16, b"", math.inf, None, None)
        assert got == ["d1"]
        assert conn.replicas[ep].session is new and not new.lost.is_set()
        assert state(conn, ep) is AVAILABLE
        assert await who.name() == "d1"


def test_retry_budget_allows_a_share_of_recent_calls() -> None:
    from callrt.client.retries import RetryBudget
    from callrt.options import RetryPolicy

    budget = RetryBudget(RetryPolicy(budget_ratio=0.2, budget_window=3, budget_min_per_second=1))
    budget.calls += 10
    spent = sum(budget.try_spend() for _ in range(20))
    assert spent == 5  # 20% of 10 calls, plus the reserve of 1/s over the 3-second window
    budget.tick()
    budget.tick()
    assert not budget.try_spend()  # the 5 retries are still inside the window
    budget.tick()  # the second that held the calls and retries has left the window
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
