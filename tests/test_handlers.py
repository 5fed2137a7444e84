"""How handlers run, as a Python developer expects: plain ``def`` in worker threads, ``@inline`` and
``async def`` on the loop, the call's deadline where anyio looks for it, and a drain on SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Protocol

import anyio
import msgspec
import pytest

from callrt import call, component, errors, inline, interface
from callrt.component import component_spec
from callrt.reflection import ReflectionAPI
from callrt.testing import WorkerProcess
from tests.gap_components import BlockingAPI, ConstrainedAPI
from tests.handler_components import Handlers

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["asyncio", "trio"], ids=["server=asyncio", "server=trio"])
def worker(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    w = WorkerProcess("tcp://127.0.0.1:0", ["tests.handler_components:Handlers"], backend=request.param)
    w.start()
    yield w
    assert w.stop() == 0


async def test_a_blocking_def_does_not_stall_the_loop(worker: WorkerProcess) -> None:
    """Three plain-def calls sleep in worker threads; an async call on the same connection answers at once."""
    with anyio.fail_after(10):
        async with call.connect(str(worker.endpoint)) as client:
            handlers = client.stub(Handlers)
            threads: list[int] = []
            async with anyio.create_task_group() as tg:

                async def block() -> None:
                    threads.append(await handlers.blocking(1.0))

                for _ in range(3):
                    tg.start_soon(block)
                await anyio.lowlevel.checkpoint()  # the three requests leave before the next ones
                start = time.perf_counter()
                assert await handlers.ping() == "pong"
                assert await handlers.deadlines(0) is not None
                answered = time.perf_counter() - start
            assert answered < 0.3, f"an async call waited {answered:.2f} s behind blocking sync ones"
            loop_thread = await handlers.loop_thread()
            assert len(set(threads)) == 3 and loop_thread not in threads  # three worker threads, none the loop's


async def test_anyio_sees_the_calls_deadline_in_async_handlers(worker: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(str(worker.endpoint)) as client:
            with anyio.fail_after(5):
                deadline, before, after = await client.stub(Handlers).deadlines(0.05)
            assert deadline is not None
            assert before == deadline and after == deadline  # before and after the handler's first await


async def test_inline_is_for_plain_defs() -> None:
    with pytest.raises(errors.RegistrationError, match="@inline is for plain def methods"):

        class Wrong:
            @inline
            async def method(self) -> None: ...


async def held_the_loop(caplog: pytest.LogCaptureFixture, address: str, method: str) -> logging.LogRecord:
    """Call ``Handlers.<method>(0.3)`` on a server at ``address`` that logs a loop held 50 ms; the one record."""
    caplog.set_level(logging.WARNING, logger="callrt.server")
    options = call.ServerOptions(slow_inline_handler=0.05)
    with anyio.fail_after(10):
        async with call.start_server(address, Handlers(), options=options) as server:
            async with call.connect(str(server.endpoint)) as client:
                await getattr(client.stub(Handlers), method)(0.3)
                with anyio.fail_after(2):
                    while not any("held the event loop" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                        await anyio.sleep(0.02)  # the watch thread reports once the loop is back
    (record,) = [r for r in caplog.records if "held the event loop" in r.getMessage()]
    return record


async def test_an_inline_handler_that_holds_the_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    record = await held_the_loop(caplog, "memory://hog", "hog")
    assert record.levelno == logging.WARNING and "tests.Handlers.hog" in record.getMessage()
    assert "make it a plain def" in record.getMessage().lower()


async def test_an_async_handler_that_holds_the_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Over TCP: on asyncio the shell's dispatcher awaits the method itself (a call without a deadline)."""
    record = await held_the_loop(caplog, "tcp://127.0.0.1:0", "ahog")
    assert record.levelno == logging.WARNING and "tests.Handlers.ahog" in record.getMessage()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_drains_and_the_worker_exits_0(backend: str, signum: signal.Signals, sockdir: Path) -> None:
    """``callrt.run(call.serve, ...)``, as a user writes it: the call in flight (not retriable) completes."""
    path = sockdir / "w.sock"
    proc = await anyio.open_process(
        [sys.executable, "-m", "tests.handler_components", f"unix://{path}", backend], cwd=ROOT
    )
    async with proc:
        with anyio.fail_after(20):
            while not path.exists():  # noqa: ASYNC110  # another process: no event to wait on
                await anyio.sleep(0.02)
            async with call.connect(f"unix://{path}") as client:
                handlers = client.stub(Handlers)
                async with anyio.create_task_group() as tg:
                    results: list[str] = []

                    async def in_flight() -> None:
                        results.append(await handlers.slow(0.5))

                    tg.start_soon(in_flight)
                    assert await handlers.ping() == "pong"  # the connection is up; the slow call was sent first
                    proc.send_signal(signum)
                assert results == ["done"]
            assert await proc.wait() == 0
        await _assert_clean_exit(proc)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_a_signal_right_after_listening_still_drains(backend: str, sockdir: Path) -> None:
    """No window at start-up: the handlers are in place before the socket exists."""
    path = sockdir / "w.sock"
    proc = await anyio.open_process(
        [sys.executable, "-m", "tests.handler_components", f"unix://{path}", backend], cwd=ROOT
    )
    async with proc:
        with anyio.fail_after(20):
            while not path.exists():  # noqa: ASYNC110
                await anyio.sleep(0.005)
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        await _assert_clean_exit(proc)


async def _assert_clean_exit(proc: anyio.abc.Process) -> None:
    assert proc.stdout is not None
    out = b"".join([chunk async for chunk in proc.stdout])
    assert b"clean exit" in out


# -- msgspec constraints on parameters (Annotated[int, msgspec.Meta(ge=0)]) -----------------------


@pytest.mark.timeout(20)  # bounded here, not by a cancel scope: one would give the calls a deadline
@pytest.mark.parametrize("deadline", [False, True], ids=["no deadline", "deadline"])
async def test_each_async_call_sees_its_own_call_across_suspensions(worker: WorkerProcess, deadline: bool) -> None:
    """Async handlers that do not suspend run on the reading task, which shares one slot for the call
    being served; one that suspends keeps its own, while many others run inline meanwhile.

    Calls without a deadline take the shell's fast path (no coroutine of ours around the handler);
    calls with one run inside the deadline's cancel scope.
    """
    with anyio.fail_after(10) if deadline else contextlib.nullcontext():
        async with call.connect(str(worker.endpoint)) as conn:
            handlers = conn.stub(Handlers)

            def tagged(tag: str) -> Any:
                return call.with_options(handlers.whose, call.CallOptions(metadata={"tag": tag}))

            results: dict[str, tuple[str, str]] = {}

            async def run(tag: str, pause: float) -> None:
                results[tag] = await tagged(tag)(pause)

            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "slow", 0.2)
                for i in range(200):
                    tg.start_soon(run, f"fast{i}", 0.0)
                tg.start_soon(run, "slow2", 0.05)
    assert results == {tag: (tag, tag) for tag in results} and len(results) == 202


@pytest.mark.timeout(20)  # bounded here, not by a cancel scope: one would give the calls a deadline
async def test_async_handlers_keep_their_task_and_scopes_across_suspensions(worker: WorkerProcess) -> None:
    """Calls without a deadline are plain: the asyncio shell awaits their methods on its dispatcher task.

    One that suspends inside a cancel scope keeps that task until it ends (a scope must exit on
    the task it was entered on), while the calls queued behind it go on without it.
    """
    async with call.connect(str(worker.endpoint)) as conn:
        handlers = conn.stub(Handlers)
        scoped: list[tuple[bool, bool]] = []
        pings: list[str] = []

        async def run_scoped() -> None:
            scoped.append(await handlers.scoped(0.1))

        async def run_ping() -> None:
            pings.append(await handlers.ping())

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(run_scoped if i % 10 == 0 else run_ping)
    assert scoped == [(True, True)] * 10 and pings == ["pong"] * 90


@pytest.fixture(scope="module", params=["asyncio", "trio"], ids=["server=asyncio", "server=trio"])
def constrained(request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    w = WorkerProcess("tcp://127.0.0.1:0", ["tests.gap_components:Constrained"], backend=request.param)
    w.start()
    yield w
    assert w.stop() == 0


async def test_parameter_constraints_are_enforced_by_the_server(constrained: WorkerProcess) -> None:
    """msgspec.Meta constraints travel in the annotations: a value outside them is an InvalidArgument
    naming the method and the parameter, and the handler never runs."""
    with anyio.fail_after(10):
        async with call.connect(str(constrained.endpoint)) as client:
            stub = client.stub(ConstrainedAPI)
            assert await stub.reserve("abc", 3) == 3
            assert await stub.reserve_async("abc", 1000) == 1000
            with pytest.raises(errors.InvalidArgument) as qty:
                await stub.reserve("abc", -1)
            assert "tests.Constrained.reserve: invalid argument 'qty'" in str(qty.value)
            assert ">= 0" in str(qty.value)
            with pytest.raises(errors.InvalidArgument, match=r"reserve_async: invalid argument 'qty'.*<= 1000"):
                await stub.reserve_async("abc", 1001)
            with pytest.raises(errors.InvalidArgument, match=r"reserve: invalid argument 'sku'.*length <= 8"):
                await stub.reserve("abcdefghi", 1)
            with pytest.raises(errors.InvalidArgument, match=r"reserve: invalid argument 'sku'.*matching regex"):
                await stub.reserve("ABC", 1)
            assert await stub.reserve("abc") == 1  # the default is not checked again, and is in range


async def test_reflection_shows_parameter_constraints(constrained: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(str(constrained.endpoint)) as client:
            info = await client.stub(ReflectionAPI).describe()
    (component,) = [c for c in info.components if c.name == "tests.Constrained"]
    (method,) = [m for m in component.methods if m.name == "reserve"]
    assert method.params is not None
    sku, qty = method.params
    assert qty.schema == {"type": "integer", "minimum": 0, "maximum": 1000}
    assert sku.schema == {"type": "string", "minLength": 1, "maxLength": 8, "pattern": "^[a-z0-9]+$"}


async def test_an_implementation_must_keep_its_interfaces_constraints() -> None:
    """The server decodes with the implementation's annotations: dropping the interface's constraints
    there would stop enforcing them, so it does not match the interface."""

    @interface(name="tests.ConstrainedAPI")
    class ConstrainedAPI(Protocol):
        async def reserve(self, qty: Annotated[int, msgspec.Meta(ge=0)]) -> int: ...

    with pytest.raises(errors.RegistrationError, match=r"reserve\(\) does not match the interface: parameter 'qty'"):

        @component(implements=ConstrainedAPI)
        class Loose:
            def reserve(self, qty: int) -> int:
                return qty

    @component(implements=ConstrainedAPI)
    class Strict:
        def reserve(self, qty: Annotated[int, msgspec.Meta(ge=0)]) -> int:
            return qty

    assert component_spec(Strict).methods["reserve"].args_from_payload(msgspec.msgpack.encode([5])) == (5,)
    with pytest.raises(errors.InvalidArgument, match="invalid argument 'qty'"):
        component_spec(Strict).methods["reserve"].args_from_payload(msgspec.msgpack.encode([-5]))


# -- abandoned threads keep their token: handler_threads bounds the live threads ----------------------


@pytest.mark.parametrize("intercepted", [False, True], ids=["plain", "intercepted"])
@pytest.mark.parametrize(  # each backend on each side; a worker per case, so not every pair
    ("anyio_backend", "server"), [("trio", "asyncio"), ("asyncio", "trio")], ids=["server=asyncio", "server=trio"]
)
async def test_timed_out_blocking_calls_do_not_pile_up_threads(server: str, intercepted: bool) -> None:
    """Calls to a blocked plain def give up at their deadline, round after round: they are answered at
    once, but their threads still run, so they still hold their tokens, and no more than
    ``handler_threads`` threads ever run (anyio's abandon_on_cancel gave the token back on asyncio:
    each round started ``limit`` more threads)."""
    limit, rounds, per_round = 3, 5, 6
    options: dict[str, object] = {"handler_threads": limit}
    if intercepted:  # handlers wrapped by an interceptor chain run their threads from interceptors.py
        options["interceptors"] = ["tests.gap_components:passing"]
    worker = WorkerProcess("tcp://127.0.0.1:0", ["tests.gap_components:Blocking"], backend=server, options=options)
    with worker, anyio.fail_after(30):
        async with call.connect(str(worker.endpoint)) as client:
            blocking = client.stub(BlockingAPI)
            threads_before = (await blocking.stats())[3]
            timed_out = 0

            async def give_up() -> None:
                nonlocal timed_out
                with anyio.move_on_after(0.15):  # the deadline travels: the server cancels the call too
                    try:
                        await blocking.wait()
                    except errors.DeadlineExceeded:
                        pass  # the server's answer came before the client gave up
                    else:
                        return
                timed_out += 1

            for _ in range(rounds):
                async with anyio.create_task_group() as tg:
                    for _ in range(per_round):
                        tg.start_soon(give_up)
            running, most, started, threads = await blocking.stats()
            assert timed_out == rounds * per_round
            assert 0 < started <= limit and most <= limit, f"{started} handler threads for handler_threads={limit}"
            assert running == started  # all still blocked: none was let go when its call timed out
            assert threads <= threads_before + limit + 2  # (+2: a thread pool may keep an idle thread or two)
            await blocking.open()  # the blocked threads return; their tokens come back as they do
            assert await blocking.wait() == "done"
            while (await blocking.stats())[0]:  # noqa: ASYNC110  # threads in another process: no event to wait on
                await anyio.sleep(0.01)  # (the woken ones finish in their own time)
