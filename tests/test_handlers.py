"""How handlers run, as a Python developer expects: plain ``def`` in worker threads, ``@inline`` and
``async def`` on the loop, the call's deadline where anyio looks for it, and a drain on SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from callrt import call, errors, inline
from callrt.testing import WorkerProcess
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


async def test_an_inline_handler_that_holds_the_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callrt.server")
    options = call.ServerOptions(slow_inline_handler=0.05)
    with anyio.fail_after(10):
        async with call.start_server("memory://hog", Handlers(), options=options):
            async with call.connect("memory://hog") as client:
                await client.stub(Handlers).hog(0.3)
                with anyio.fail_after(2):
                    while not any("held the event loop" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                        await anyio.sleep(0.02)  # the watch thread reports once the loop is back
    (record,) = [r for r in caplog.records if "held the event loop" in r.getMessage()]
    assert record.levelno == logging.WARNING and "tests.Handlers.hog" in record.getMessage()
    assert "make it a plain def" in record.getMessage().lower()


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
