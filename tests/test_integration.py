"""Integration: real servers in worker processes, real clients, over TCP and Unix sockets.

Every test runs its client on asyncio+uvloop, asyncio and trio (``anyio_backend``).
The module's main worker runs on the asyncio and the trio backend, on TCP and on
a Unix socket; the tests that kill or stop a server start a fresh one (on both
backends) next to a long-lived spare replica.

Handlers that must be watched from outside report to a marker file (see
``tests/components.py``); tests poll it with a deadline, never sleep to order
anything.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from callrt import call, component
from callrt.call import BalancerFunc, CallOptions, ClientOptions, Connection, ReplicaState, RetryPolicy
from callrt.errors import (
    CommunicationError,
    ErrorCode,
    InvalidArgument,
    LocalProtocolError,
    RemoteError,
    UnknownMethod,
    Unreachable,
)
from callrt.testing import WorkerProcess
from tests.components import Bag, Color, Echo, Item, Lab, Level, Point, events

pytestmark = pytest.mark.anyio

COMPONENTS = ["tests.components:Echo", "tests.components:Lab"]


# -- fixtures and helpers -------------------------------------------------------


def _address(scratch: Path, transport: str) -> str:
    if transport == "tcp":
        return "tcp://127.0.0.1:0"
    return f"unix://{scratch}/{uuid.uuid4().hex[:8]}.sock"


@pytest.fixture(
    scope="module",
    params=[("asyncio", "tcp"), ("asyncio", "unix"), ("trio", "tcp"), ("trio", "unix")],
    ids=["server=asyncio-tcp", "server=asyncio-unix", "server=trio-tcp", "server=trio-unix"],
)
def worker(request: pytest.FixtureRequest, scratch: Path) -> Iterator[WorkerProcess]:
    backend, transport = request.param
    w = WorkerProcess(_address(scratch, transport), COMPONENTS, backend=backend)
    w.start()
    yield w
    assert w.stop() == 0


@pytest.fixture(scope="module")
def spare(scratch: Path) -> Iterator[WorkerProcess]:
    """A long-lived replica next to the ones the tests kill or stop."""
    w = WorkerProcess(_address(scratch, "unix"), COMPONENTS, backend="asyncio")
    w.start()
    yield w
    assert w.stop() == 0


@pytest.fixture(params=["asyncio", "trio"], ids=["victim=asyncio", "victim=trio"])
def victim(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    """A fresh replica for one test to kill or stop."""
    w = WorkerProcess("tcp://127.0.0.1:0", COMPONENTS, backend=request.param)
    w.start()
    yield w
    w.kill()


@pytest.fixture(
    scope="module",
    params=[("asyncio", "tcp"), ("trio", "unix")],
    ids=["server=asyncio-tcp", "server=trio-unix"],
)
def small_worker(request: pytest.FixtureRequest, scratch: Path) -> Iterator[WorkerProcess]:
    """A server that accepts frame bodies of at most 1 MiB."""
    backend, transport = request.param
    w = WorkerProcess(_address(scratch, transport), COMPONENTS, backend=backend, options={"max_frame_size": 1 << 20})
    w.start()
    yield w
    assert w.stop() == 0


@pytest.fixture
def marker(scratch: Path) -> str:
    return str(scratch / f"m{uuid.uuid4().hex[:12]}")


@asynccontextmanager
async def connected(*workers: WorkerProcess | str, **options: Any) -> AsyncIterator[Connection]:
    endpoints = [w if isinstance(w, str) else str(w.endpoint) for w in workers]
    async with call.connect(call.ConstantResolver(endpoints), options=ClientOptions(**options)) as conn:
        yield conn


def prefer(worker: WorkerProcess) -> BalancerFunc:
    """A balancer sending every call to ``worker`` while it is available, elsewhere otherwise."""
    endpoint = worker.endpoint

    def pick(replicas: Any, options: CallOptions | None) -> Any:
        return next((r for r in replicas if r.endpoint == endpoint), replicas[0])

    return BalancerFunc(pick)


async def until(predicate: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate``: state held by another process (a marker file) or by the client's replica tasks."""
    with anyio.move_on_after(within):
        # Nothing to wait on: the state is in another process, so poll.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {within}s waiting for {what}")


async def until_event(marker: str, event: str, count: int = 1, within: float = 5.0) -> list[tuple[str, int, str]]:
    await until(lambda: sum(e == event for e, _, _ in events(marker)) >= count, within, f"{event!r} in {marker}")
    return events(marker)


async def all_available(conn: Connection, n: int) -> None:
    await until(
        lambda: sum(r.state is ReplicaState.AVAILABLE for r in conn.replicas.values()) >= n,
        what=f"{n} available replicas",
    )


def dead_tcp_endpoint() -> str:
    """A TCP address nobody listens on (a port just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def sample_bag(maybe: int | None, either: int | str) -> Bag:
    return Bag(
        i=-(1 << 62),
        f=2.5e-300,
        s="héllo ✓",
        b=bytes(range(256)),
        flag=True,
        point=Point(3, -4),
        item=Item("x1", 2, Decimal("19.99"), ["a", "b"]),
        color=Color.BLUE,
        level=Level.HIGH,
        when=dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.UTC),
        day=dt.date(1999, 12, 31),
        uid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        amount=Decimal("-0.000000000000000000001"),
        maybe=maybe,
        either=either,
        items=[Item("y", 0, Decimal(0)), Item("z", 7, Decimal("1E+3"), ["q"])],
        by_name={"origin": Point(0, 0), "ünï": Point(1, 2)},
        pair=(7, "seven"),
    )


# -- codec through a real server ------------------------------------------------


async def test_types_round_trip(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with connected(worker) as conn:
            lab = conn.stub(Lab)
            assert await lab.add(2, 3) == 5
            assert await lab.add_async(-2, 3) == 1
            assert await lab.nothing() is None
            for maybe, either in [(None, "text"), (0, 42)]:
                bag = sample_bag(maybe, either)
                assert await lab.bag(bag) == bag
                assert await lab.bag_async(bag) == bag

            when = dt.datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
            uid = uuid.uuid4()
            items = [Item("k", 1, Decimal("3.14159265358979323846264338327950288"))]
            by_name = {"p": Point(1, 1)}
            got = await lab.mixed(Point(9, 8), Color.RED, when, uid, Decimal("1.10"), None, "s", items, by_name)
            assert (got.point, got.color, got.when, got.uid, got.amount) == (
                Point(9, 8),
                Color.RED,
                when,
                uid,
                Decimal("1.10"),
            )
            assert str(got.amount) == "1.10"  # the exact decimal, not a float
            assert (got.maybe, got.either, got.items, got.by_name) == (None, "s", items, by_name)
            # The server decoded the arguments into their declared types, not into plain msgpack values.
            assert got.types == ["Point", "Color", "datetime", "UUID", "Decimal", "NoneType", "str", "Item", "Point"]
            got = await lab.mixed(Point(0, 0), Color.BLUE, when, uid, Decimal(0), 5, 6, [], {})
            assert (got.maybe, got.either) == (5, 6)
            assert got.types == ["Point", "Color", "datetime", "UUID", "Decimal", "int", "int"]


async def test_wrong_typed_argument_fails_only_that_call(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with connected(worker) as conn:
            lab = conn.stub(Lab)
            results: dict[int, int] = {}
            failures: dict[str, RemoteError] = {}

            async def good(i: int) -> None:
                results[i] = await lab.ident(i, 0.001 * (i % 5))

            async def bad(name: str, *args: Any) -> None:
                with pytest.raises(InvalidArgument) as info:
                    await lab.add(*args)
                failures[name] = info.value

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(good, i)
                tg.start_soon(bad, "a", "one", 2)
                tg.start_soon(bad, "b", 1, [2])
                for i in range(20, 40):
                    tg.start_soon(good, i)
            assert results == {i: i for i in range(40)}
            assert "'a'" in failures["a"].message and "tests.Lab.add" in failures["a"].message
            assert "'b'" in failures["b"].message
            assert failures["a"].code is ErrorCode.INVALID_ARGUMENT
            # A struct field deep inside an argument is named too.
            with pytest.raises(InvalidArgument, match=r"'bag'.*qty"):
                await conn.stub(_LooseLab).bag({**_bag_dict(), "item": {"sku": "x", "qty": "two", "price": "1"}})
            assert await lab.add(1, 1) == 2


async def test_stub_methods_bind_arguments_like_the_component(worker: WorkerProcess) -> None:
    """A stub method takes what the component method takes; bad arguments fail before anything is sent."""
    import inspect

    with anyio.fail_after(10):
        async with connected(worker) as conn:
            lab = conn.stub(Lab)
            assert inspect.signature(lab.add) == inspect.signature(Lab().add)
            assert lab.add.__name__ == "add" and "tests.Lab.add" in repr(lab.add)
            assert await lab.add(1, 2) == await lab.add(1, b=2) == await lab.add(b=2, a=1) == 3
            with pytest.raises(TypeError, match="tests.Lab.add"):
                await lab.add(1)
            with pytest.raises(TypeError, match="tests.Lab.add"):
                await lab.add(1, 2, 3)
            with pytest.raises(InvalidArgument, match="argument 'b'"):
                await lab.add(1, object())  # right count, not encodable: named all the same
            assert conn.retry_counts["attempts"] == 3  # only the three good calls were made


@component(name="tests.Lab")
class _LooseLab:
    """The client's view of ``tests.Lab.bag`` without types: lets a test send a wrong-shaped bag."""

    def bag(self, bag):  # type: ignore[no-untyped-def]
        ...


def _bag_dict() -> dict[str, Any]:
    import msgspec

    natives = (bytes, dt.datetime, dt.date, uuid.UUID, Decimal)
    return msgspec.to_builtins(sample_bag(None, 1), builtin_types=natives)  # type: ignore[no-any-return]


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, remote_type, raiser",
    [("fail", "ValueError", "_raise_deep_failure"), ("fail_async", "LookupError", "_raise_async_failure")],
)
async def test_handler_exception_reaches_caller(
    worker: WorkerProcess, method: str, remote_type: str, raiser: str
) -> None:
    with anyio.fail_after(10):
        async with connected(worker) as conn:
            lab = conn.stub(Lab)
            with pytest.raises(RemoteError) as info:
                await getattr(lab, method)("the cheese is off")
            err = info.value
            assert type(err) is RemoteError and not isinstance(err, CommunicationError)
            assert err.code is ErrorCode.UNKNOWN
            assert err.remote_type == remote_type
            assert err.message == "the cheese is off"
            assert "Traceback (most recent call last)" in err.remote_traceback
            assert raiser in err.remote_traceback and f"{remote_type}: the cheese is off" in err.remote_traceback
            assert await lab.add(1, 2) == 3  # the connection lives on


async def test_remote_error_subclass_keeps_its_code(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with connected(worker) as conn:
            lab = conn.stub(Lab)
            with pytest.raises(RemoteError) as info:
                await lab.deny("ann")
            err = info.value
            assert err.code is ErrorCode.PERMISSION_DENIED and err.http_status == 403 and err.grpc_status == 7
            assert err.remote_type == "tests.components.Forbidden"
            assert err.message == "ann may not"
            assert "in deny" in err.remote_traceback

            with pytest.raises(RemoteError) as info:
                await lab.deny_with("not_found", "no such cart")
            assert info.value.code is ErrorCode.NOT_FOUND and info.value.message == "no such cart"
            # A code with a dedicated class arrives as that class.
            with pytest.raises(InvalidArgument) as info2:
                await lab.deny_with("invalid_argument", "qty must be positive")
            assert info2.value.message == "qty must be positive"


async def test_unknown_method(worker: WorkerProcess) -> None:
    @component(name="tests.Echo")
    class EchoPlus:
        def echo(self, data: bytes) -> bytes: ...

        def shout(self, data: bytes) -> bytes: ...

    with anyio.fail_after(10):
        async with connected(worker) as conn:
            with pytest.raises(UnknownMethod) as info:
                await conn.stub(EchoPlus).shout(b"hi")
            assert info.value.code is ErrorCode.UNIMPLEMENTED
            with pytest.raises(UnknownMethod):
                await conn.stub(Echo, name="tests.NotServedHere").echo(b"hi")
            # Same component name and method: served.
            assert await conn.stub(EchoPlus).echo(b"hi") == b"hi"


async def test_errors_leave_the_connect_block_as_themselves(worker: WorkerProcess) -> None:
    # Not wrapped in an exception group by the client's task group: ``except`` works outside.
    with anyio.fail_after(10):
        with pytest.raises(InvalidArgument):
            async with connected(worker) as conn:
                await conn.stub(Lab).add("x", 1)
        with pytest.raises(KeyError):
            async with connected(worker) as conn:
                assert await conn.stub(Lab).add(1, 1) == 2
                raise KeyError("mine")


# -- communication failures and retries --------------------------------------------


async def test_empty_constant_resolver_is_unreachable_at_connect() -> None:
    with anyio.fail_after(5):
        with pytest.raises(Unreachable):
            async with call.connect(call.ConstantResolver([])):
                pytest.fail("connected to nothing")


@pytest.mark.parametrize("where", ["tcp", "unix"])
async def test_endpoint_nobody_listens_on(where: str, scratch: Path) -> None:
    endpoint = dead_tcp_endpoint() if where == "tcp" else f"unix://{scratch}/nobody.sock"
    async with connected(endpoint, pick_timeout=0.1, retry=RetryPolicy(max_attempts=3)) as conn:
        echo = conn.stub(Echo)
        # Without a deadline the call waits up to pick_timeout for a replica (per attempt).
        start = time.monotonic()
        with pytest.raises(Unreachable):
            await echo.echo(b"x")
        assert time.monotonic() - start < 2.0
        assert 1 <= conn.retry_counts["attempts"] <= 3
        # With a deadline it fails by the deadline, as a timeout or as Unreachable.
        start = time.monotonic()
        with pytest.raises((TimeoutError, Unreachable)):
            with anyio.fail_after(0.3):
                await echo.echo(b"x")
        assert time.monotonic() - start < 0.3 + 1.0


async def test_retries_are_bounded_by_max_attempts(marker: str) -> None:
    # Every attempt reaches a handler that takes its whole server down: each is a
    # communication error after the request was sent, so each is retried, up to the cap.
    crashers = [WorkerProcess("tcp://127.0.0.1:0", COMPONENTS, backend=b) for b in ("asyncio", "trio", "asyncio")]
    try:
        for w in crashers:
            w.start()
        policy = RetryPolicy(max_attempts=2, initial_backoff=0.001)
        async with connected(*crashers, retry=policy) as conn:
            await all_available(conn, 3)
            with anyio.fail_after(10):
                with pytest.raises(CommunicationError) as info:
                    await conn.stub(Lab).crash(marker)
            assert not isinstance(info.value, RemoteError)
            starts = [pid for e, pid, _ in events(marker) if e == "start"]
            assert len(starts) == 2 and len(set(starts)) == 2, starts  # two attempts, two replicas
            assert conn.retry_counts == {"attempts": 2, "retries": 1}
            await until(lambda: sum(w.proc.poll() is not None for w in crashers) == 2, what="two crashed workers")
            (survivor,) = [w for w in crashers if w.proc.poll() is None]
            assert survivor.pid not in starts
    finally:
        for w in crashers:
            w.kill()


async def test_retriable_call_moves_to_another_replica_when_server_dies(
    victim: WorkerProcess, spare: WorkerProcess, marker: str
) -> None:
    with anyio.fail_after(15):
        async with connected(victim, spare, balancer=prefer(victim)) as conn:
            await all_available(conn, 2)
            lab = conn.stub(Lab)
            result: list[int] = []

            async def run() -> None:
                result.append(await lab.once(marker, 30.0))

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                first = await until_event(marker, "start")
                assert first[0][1] == victim.pid  # the handler is blocked in the victim
                victim.kill()
            assert result == [spare.pid]
            assert [(e, pid) for e, pid, _ in events(marker)] == [
                ("start", victim.pid),
                ("start", spare.pid),
                ("done", spare.pid),
            ]
            assert conn.retry_counts["retries"] >= 1


async def test_not_retriable_call_is_not_rerun_when_server_dies(
    victim: WorkerProcess, spare: WorkerProcess, marker: str
) -> None:
    with anyio.fail_after(15):
        async with connected(victim, spare, balancer=prefer(victim)) as conn:
            await all_available(conn, 2)
            lab = conn.stub(Lab)
            errors: list[BaseException] = []

            async def run() -> None:
                try:
                    await lab.once_unsafe(marker, 30.0)
                except CommunicationError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await until_event(marker, "start")
                victim.kill()
            assert len(errors) == 1 and not isinstance(errors[0], RemoteError)
            # The client is still usable, and nothing ran the handler a second time.
            assert await lab.pid() == spare.pid
            assert [(e, pid) for e, pid, _ in events(marker)] == [("start", victim.pid)]


# -- deadlines, cancellation, context ---------------------------------------------------


async def test_deadline_cancels_the_remote_handler(worker: WorkerProcess, marker: str) -> None:
    async with connected(worker) as conn:
        lab = conn.stub(Lab)
        await lab.pid()  # connected: the timing below is the call's alone
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.2):
                await lab.nap(5.0, marker)
        elapsed = time.monotonic() - start
        assert 0.19 <= elapsed < 0.2 + 0.5
        found = await until_event(marker, "cancelled", within=3)
        started = [d for e, _, d in found if e == "start"]
        assert len(started) == 1 and 0 < float(started[0]) <= 0.201  # current_call().deadline was set
        assert "done" not in [e for e, _, _ in found]
        with anyio.fail_after(5):
            assert await lab.add(1, 1) == 2


async def test_cancelled_caller_cancels_the_remote_handler(worker: WorkerProcess, marker: str) -> None:
    async with connected(worker) as conn:
        lab = conn.stub(Lab)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lab.nap, 30.0, marker)  # no deadline: only the cancel frame can stop it
            found = await until_event(marker, "start")
            assert found[0][2] == "none"
            tg.cancel_scope.cancel()
        found = await until_event(marker, "cancelled", within=3)
        assert [e for e, _, _ in found] == ["start", "cancelled"]
        with anyio.fail_after(5):
            assert await lab.add(2, 2) == 4


@pytest.mark.parametrize("method", ["context", "context_async"])
async def test_trace_context_metadata_and_caller_reach_the_handler(worker: WorkerProcess, method: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("callrt-tests")
    # An incoming (remote) parent that carries a tracestate; the client span inherits it.
    upstream = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")]),
    )
    parent = trace.set_span_in_context(NonRecordingSpan(upstream))
    # No deadline around the first calls (pytest-timeout bounds them): none must be sent.
    async with connected(worker, caller="integration-test") as conn:
        stub = conn.stub(Lab)
        with tracer.start_as_current_span("client call", context=parent) as span:
            options = CallOptions(metadata={"tenant": "acme", "unicode": "ünï ✓"})
            info = await getattr(stub, method).options(options)()
        ours = span.get_span_context()
        assert info.pid == worker.pid
        assert ours.trace_id == upstream.trace_id
        assert info.trace_id == f"{ours.trace_id:032x}"
        assert info.span_id == f"{ours.span_id:016x}"  # the client span is the handler's parent
        assert info.remote_parent and info.trace_flags == int(TraceFlags.SAMPLED)
        assert info.tracestate == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        assert [s.name for s in exporter.get_finished_spans()][-1] == "client call"
        assert info.method == f"tests.Lab.{method}"
        assert info.metadata == {"tenant": "acme", "unicode": "ünï ✓"}
        assert info.caller == "integration-test"
        assert info.deadline_left is None

        # No span, no metadata: nothing is sent.
        info = await getattr(stub, method)()
        assert (int(info.trace_id, 16), int(info.span_id, 16), info.metadata) == (0, 0, {})
        with anyio.fail_after(5):
            info = await getattr(stub, method)()
        assert info.deadline_left is not None and 0 < info.deadline_left <= 5


async def test_trace_context_stays_with_its_call(worker: WorkerProcess) -> None:
    """Concurrent calls, some in spans of their own and some in none: each handler sees its own.

    Handlers block, so the server hands its reading path to new tasks while others run;
    the context one call attached must not travel with that hand-off into the next calls.
    """
    tracer = TracerProvider().get_tracer("callrt-tests")
    seen: dict[int, tuple[str, str, str]] = {}
    expected: dict[int, tuple[str, str, str]] = {}

    async def one(stub: Any, i: int) -> None:
        if i % 2:
            info = await stub.context_async()
            expected[i] = ("0" * 32, "0" * 16, "")
        else:
            with tracer.start_as_current_span(f"call {i}") as span:
                options = CallOptions(metadata={"i": str(i)})
                info = await stub.context_async.options(options)()
            ctx = span.get_span_context()
            expected[i] = (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", str(i))
        seen[i] = (info.trace_id, info.span_id, info.metadata.get("i", ""))

    async with connected(worker) as conn:
        stub = conn.stub(Lab)
        with anyio.fail_after(10):
            for _ in range(3):
                async with anyio.create_task_group() as tg:
                    for i in range(40):
                        tg.start_soon(one, stub, i)
                assert seen == expected


# -- drain -------------------------------------------------------------------------


async def test_sigterm_drains_in_flight_calls(victim: WorkerProcess, spare: WorkerProcess, marker: str) -> None:
    with anyio.fail_after(15):
        async with connected(victim, spare, balancer=prefer(victim)) as conn, connected(victim) as only:
            await all_available(conn, 2)
            await all_available(only, 1)
            lab = conn.stub(Lab)
            result: list[int] = []
            exit_code: list[int] = []

            async def in_flight() -> None:
                result.append(await lab.nap(0.5, marker))

            async def stop() -> None:
                exit_code.append(await anyio.to_thread.run_sync(victim.stop))

            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                await until_event(marker, "start")
                tg.start_soon(stop)
                # The goaway arrives while the call is still running in the victim.
                await until(lambda: conn.replicas[victim.endpoint].state is not ReplicaState.AVAILABLE, what="goaway")
                await until(lambda: only.replicas[victim.endpoint].state is not ReplicaState.AVAILABLE, what="goaway")
                assert not result
                # New calls go to the other replica, or fail cleanly when there is none.
                assert [await lab.pid() for _ in range(3)] == [spare.pid] * 3
                with pytest.raises(Unreachable):
                    await only.stub(Lab).pid.options(CallOptions(fail_fast=True))()
            assert result == [victim.pid]
            assert [e for e, _, _ in events(marker)] == ["start", "done"]
            assert exit_code == [0]


# -- load and size -------------------------------------------------------------------


async def test_many_concurrent_calls_on_one_connection(worker: WorkerProcess) -> None:
    with anyio.fail_after(30):
        async with connected(worker) as conn:
            lab = conn.stub(Lab)
            results: dict[int, int] = {}

            async def one(i: int) -> None:
                # Replies come back out of order: some handlers block, for different times.
                if i % 3 == 0:
                    results[i] = await lab.ident_sync(i)
                else:
                    results[i] = await lab.ident(i, 0.0005 * (i % 11))

            async with anyio.create_task_group() as tg:
                for i in range(500):
                    tg.start_soon(one, i)
            assert results == {i: i for i in range(500)}
            assert len(conn.replicas) == 1


async def test_large_payload_round_trips(worker: WorkerProcess) -> None:
    payload = os.urandom(1 << 16) * 128  # 8 MiB
    with anyio.fail_after(30):
        async with connected(worker) as conn:
            echo = conn.stub(Echo)
            assert await echo.echo(payload) == payload
            assert await echo.echo(b"small") == b"small"


async def test_result_over_callers_max_frame_fails_that_call_only(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with connected(worker, max_frame_size=1 << 16) as conn:
            echo = conn.stub(Echo)
            with pytest.raises(RemoteError, match="maximum frame") as raised:
                await echo.echo(b"x" * (1 << 16))  # the request fits; its echo, with a header, does not
            assert raised.value.code is ErrorCode.RESOURCE_EXHAUSTED
            assert await echo.echo(b"ok") == b"ok"
            assert len(conn.replicas) == 1 and conn.retry_counts["retries"] == 0


async def test_payload_over_servers_max_frame_fails_locally(small_worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with connected(small_worker) as conn:
            echo = conn.stub(Echo)
            near = b"n" * ((1 << 20) - 64)
            assert await echo.echo(near) == near
            with pytest.raises(LocalProtocolError, match="maximum"):
                await echo.echo(b"x" * (2 << 20))
            with pytest.raises(LocalProtocolError):
                await echo.echo(b"x" * (1 << 20))
            # Nothing was sent; the same connection keeps working.
            assert await echo.echo(b"ok") == b"ok"
            assert await echo.echo(near) == near
            assert conn.retry_counts["retries"] == 0
