"""Interceptors (``ServerOptions.interceptors`` / ``ClientOptions.interceptors``): order, rejection, metadata, timing, peer."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from callrt import call, component, errors
from callrt.interceptors import ClientCall, ClientNext, ServerCall, ServerNext
from callrt.testing import WorkerProcess
from tests.interceptor_components import Intercepted, reject_secret, stamp_peer
from tests.support import recording_client

pytestmark = pytest.mark.anyio


def recording_server(name: str, log: list[str]) -> Any:
    async def interceptor(call: ServerCall, next: ServerNext) -> bytes:
        log.append(f"{name} in {call.method} from {call.peer.address}")
        try:
            return await next(call)
        finally:
            log.append(f"{name} out")

    return interceptor


async def test_both_chains_run_in_order_around_each_handler_kind() -> None:
    log: list[str] = []

    async def handler_mark(call: ServerCall, next: ServerNext) -> bytes:
        result = await next(call)
        log.append("handler returned")
        return result

    server_options = call.ServerOptions(
        interceptors=(recording_server("s1", log), recording_server("s2", log), handler_mark)
    )
    client_options = call.ClientOptions(interceptors=(recording_client("c1", log), recording_client("c2", log)))
    with anyio.fail_after(10):
        async with call.start_server("memory://order", Intercepted(), options=server_options):
            async with call.connect("memory://order", options=client_options) as client:
                stub = client.stub(Intercepted)
                for method, thread in (("meta", None), ("meta_thread", "False"), ("meta_inline", "True")):
                    log.clear()
                    seen = await getattr(stub, method)()
                    assert seen.get("main_thread") == thread  # a plain def still runs in a worker thread
                    full = f"tests.Intercepted.{method}"
                    assert log == [
                        f"c1 in {full} replica=None",
                        f"c2 in {full} replica=None",
                        f"s1 in {full} from memory://order",
                        f"s2 in {full} from memory://order",
                        "handler returned",
                        "s2 out",
                        "s1 out",
                        "c2 out replica=memory://order",
                        "c1 out replica=memory://order",
                    ]


async def test_a_server_interceptor_rejects_with_the_error_the_caller_gets() -> None:
    options = call.ServerOptions(interceptors=(reject_secret,))
    with anyio.fail_after(10):
        async with call.start_server("memory://reject", Intercepted(), options=options):
            async with call.connect("memory://reject") as client:
                stub = client.stub(Intercepted)
                with pytest.raises(errors.PermissionDenied, match="tests.Intercepted.secret needs role admin"):
                    await stub.secret()
                admin = call.with_options(stub.secret, call.CallOptions(metadata={"role": "admin"}))
                assert await admin() == "the secret"
                assert await stub.meta() == {}  # other methods pass
                with pytest.raises(errors.RemoteError) as failed:  # a handler's error passes back through
                    await stub.fail()
                assert failed.value.code is errors.ErrorCode.NOT_FOUND


async def test_a_client_interceptor_rejects_before_anything_is_sent() -> None:
    served: list[str] = []
    attempts: list[str] = []

    async def count(call: ServerCall, next: ServerNext) -> bytes:
        served.append(call.method)
        return await next(call)

    async def refuse(call: ClientCall, next: ClientNext) -> Any:
        attempts.append(call.method)
        if call.method.endswith(".secret"):
            raise errors.PermissionDenied("not from this client")
        return await next(call)

    with anyio.fail_after(10):
        async with call.start_server(
            "memory://refuse", Intercepted(), options=call.ServerOptions(interceptors=(count,))
        ):
            async with call.connect("memory://refuse", options=call.ClientOptions(interceptors=(refuse,))) as client:
                stub = client.stub(Intercepted)
                with pytest.raises(errors.PermissionDenied, match="not from this client"):
                    await stub.secret()
                assert await stub.meta() == {}
    assert attempts == ["tests.Intercepted.secret", "tests.Intercepted.meta"]  # once each: no retry
    assert served == ["tests.Intercepted.meta"]


async def test_metadata_added_by_interceptors_reaches_the_handler() -> None:
    async def tenant(call: ClientCall, next: ClientNext) -> Any:
        return await next(call.with_metadata({"tenant": "t1", "role": "admin"}))

    # reject_secret, after stamp_peer, sees stamp_peer's copy of the call; the handler sees it too.
    server_options = call.ServerOptions(interceptors=(stamp_peer, reject_secret))
    with anyio.fail_after(10):
        async with call.start_server("memory://meta", Intercepted(), options=server_options):
            async with call.connect("memory://meta", options=call.ClientOptions(interceptors=(tenant,))) as client:
                stub: Any = client.stub(Intercepted)  # its plain def methods are awaitable too
                expected = {"tenant": "t1", "role": "admin", "peer": "memory://meta", "seen_by": "server"}
                assert await stub.meta() == expected
                assert await stub.meta_thread() == {**expected, "main_thread": "False"}
                assert await stub.meta_inline() == {**expected, "main_thread": "True"}
                assert await stub.secret() == "the secret"  # the client's role passed the server's check
                # The caller's own metadata is kept, the interceptor's added to it.
                mine = call.with_options(stub, call.CallOptions(metadata={"request": "r1", "tenant": "mine"}))
                assert await mine.meta() == {**expected, "request": "r1"}


@component(name="tests.Slow")
class Slow:
    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def wait(self) -> None:
        self.entered.set()
        await self.release.wait()


async def test_interceptors_time_calls_and_see_the_deadline() -> None:
    durations: dict[str, float] = {}
    deadlines: dict[str, float | None] = {}

    async def time_server(call: ServerCall, next: ServerNext) -> bytes:
        start = anyio.current_time()
        deadlines["server"] = call.deadline
        try:
            return await next(call)
        finally:
            durations["server"] = anyio.current_time() - start

    async def time_client(call: ClientCall, next: ClientNext) -> Any:
        start = anyio.current_time()
        deadlines["client"] = call.deadline
        try:
            return await next(call)
        finally:
            durations["client"] = anyio.current_time() - start

    slow = Slow()
    waited = 0.0
    with anyio.fail_after(10):
        async with call.start_server("memory://timed", slow, options=call.ServerOptions(interceptors=(time_server,))):
            async with call.connect(
                "memory://timed", options=call.ClientOptions(interceptors=(time_client,))
            ) as client:
                stub = client.stub(Slow)
                scope = anyio.CancelScope(deadline=anyio.current_time() + 5)

                async def wait() -> None:
                    with scope:
                        await stub.wait()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait)
                    await slow.entered.wait()
                    began = anyio.current_time()
                    await anyio.sleep(0.05)  # the time to measure, not an ordering
                    waited = anyio.current_time() - began
                    slow.release.set()
    # uvloop's clock counts whole milliseconds: allow one either way.
    assert durations["server"] >= 0.05 - 0.002 and durations["client"] >= waited - 0.002
    assert durations["client"] >= durations["server"] - 0.002
    assert deadlines["client"] == scope.deadline
    assert deadlines["server"] is not None and deadlines["server"] <= scope.deadline + 0.1


async def test_an_empty_chain_leaves_stubs_and_handlers_as_they_are() -> None:
    async def passthrough(call: Any, next: Any) -> Any:
        return await next(call)

    async with call.start_server("memory://plain", Intercepted()) as plain:
        async with call.start_server(
            "memory://wrapped", Intercepted(), options=call.ServerOptions(interceptors=(passthrough,))
        ) as wrapped:
            entries = {entry.name: entry for entry in map(plain.handlers.get, plain.handlers) if entry is not None}
            assert entries["tests.Intercepted.meta_inline"].inline  # no interceptors: served inline as ever
            assert not entries["tests.Intercepted.meta_thread"].is_async
            for key in wrapped.handlers:
                entry = wrapped.handlers.get(key)
                assert entry is not None and entry.is_async and not entry.inline
            async with call.connect("memory://plain") as client:
                # The stub's method is the remote call itself, not a wrapper around it.
                assert client.stub(Intercepted).meta.__code__.co_filename.endswith("stubs.py")
            options = call.ClientOptions(interceptors=(passthrough,))
            async with call.connect("memory://wrapped", options=options) as client:
                stub = client.stub(Intercepted)
                assert stub.meta.__code__.co_filename.endswith("interceptors.py")
                assert await stub.meta() == {}
                assert await call.with_options(stub.meta, call.CallOptions(metadata={"a": "b"}))() == {"a": "b"}


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_interceptors_in_a_worker_process_over_tcp(anyio_backend: str) -> None:
    options = {
        "interceptors": ["tests.interceptor_components:stamp_peer", "tests.interceptor_components:reject_secret"]
    }
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.interceptor_components:Intercepted"], options=options) as worker:
        log: list[str] = []
        client_options = call.ClientOptions(interceptors=(recording_client("c", log),))
        with anyio.fail_after(20):
            async with call.connect(str(worker.endpoint), options=client_options) as client:
                stub = client.stub(Intercepted)
                with pytest.raises(errors.PermissionDenied):
                    await stub.secret()
                seen = await stub.meta()
    assert seen["seen_by"] == "server" and seen["peer"].startswith("tcp://127.0.0.1:")
    assert log[-1] == f"c out replica={worker.endpoint}"
