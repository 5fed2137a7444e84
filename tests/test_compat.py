"""Two versions of a component in two processes, as during a rolling deployment.

``tests/compat_v1.py`` and ``tests/compat_v2.py`` are the same component (one
name, so the same method keys) before and after a change. Each test calls a
real worker running one version through stubs of the other, and checks what
docs/compatibility.md and docs/errors.md promise: what works, and that what
does not fails with an error naming the method and the parameter; declared
exceptions come back as their class, and nothing else is ever instantiated.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio
import pytest

from callrt import call, component
from callrt.errors import ErrorCode, InvalidArgument, RemoteError, UnknownMethod, remote_details
from callrt.testing import WorkerProcess
from tests import compat_v1 as v1
from tests import compat_v2 as v2

pytestmark = pytest.mark.anyio

SERVED = "tests.compat.Inventory (add, annotate, fail, put, stamp, take, weigh)"


@pytest.fixture(scope="module")
def worker_v1() -> Iterator[WorkerProcess]:
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.compat_v1:Inventory"], backend="trio") as worker:
        yield worker


@pytest.fixture(scope="module")
def worker_v2() -> Iterator[WorkerProcess]:
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.compat_v2:Inventory"], backend="asyncio") as worker:
        yield worker


def _endpoint(worker: WorkerProcess) -> str:
    return str(worker.endpoint)


async def test_an_old_client_calls_a_new_server(worker_v2: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(_endpoint(worker_v2)) as conn:
            old = conn.stub(v1.Inventory)
            # A trailing parameter with a default, added on the server: the server's default is used.
            assert await old.add("x", 2) == "x:2:restock"  # type: ignore[misc]
            # Struct and dataclass fields added with defaults: the server fills them in, the
            # client ignores the ones it does not know in the result.
            assert await old.put(v1.Item("x", 2)) == v1.Item("x", 2)  # type: ignore[misc]
            assert await old.annotate(v1.Note("hi")) == v1.Note("hi")  # type: ignore[misc]
            # A parameter added without a default: the error names the method and the parameter.
            with pytest.raises(InvalidArgument) as info:
                await old.stamp("x")  # type: ignore[misc]
            assert str(info.value).startswith("[invalid_argument] (callrt.errors.InvalidArgument) ")
            assert "tests.compat.Inventory.stamp: missing argument 'when'" in info.value.message
            # A parameter whose type changed.
            with pytest.raises(InvalidArgument) as info:
                await old.weigh(5)  # type: ignore[misc]
            assert "tests.compat.Inventory.weigh: invalid argument 'grams'" in info.value.message


async def test_a_new_client_calls_an_old_server(worker_v1: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(_endpoint(worker_v1)) as conn:
            new = conn.stub(v2.Inventory)
            # The new trailing parameter is not sent unless passed: the old server serves the call.
            assert await new.add("x", 2) == "x:2"  # type: ignore[misc]
            # Passed, it cannot be served: the error names the method and the parameter.
            for call_it in (lambda: new.add("x", 2, "sale"), lambda: new.add("x", 2, reason="sale")):
                with pytest.raises(InvalidArgument) as info:
                    await call_it()
                message = info.value.message
                assert message.startswith("tests.compat.Inventory.add: the call sent 3 arguments"), message
                assert "takes 2 (sku, qty)" in message
                assert message.endswith("which this server does not know: 'reason'"), message
            # Fields added with defaults: the old server ignores them; the new client fills them in.
            assert await new.put(v2.Item("x", 2, "n")) == v2.Item("x", 2, "")  # type: ignore[misc]
            assert await new.annotate(v2.Note("hi", "ann")) == v2.Note("hi", "anon")  # type: ignore[misc]
            # A method the old server lacks: named by the caller, with what the server serves.
            with pytest.raises(UnknownMethod) as unknown:
                await new.count()  # type: ignore[misc]
            assert unknown.value.code is ErrorCode.UNIMPLEMENTED
            message = unknown.value.message
            assert message.startswith("tests.compat.Inventory.count: the server does not serve this method"), message
            assert f"this server serves {SERVED}" in message


async def test_a_component_served_under_another_name_is_named(worker_v1: WorkerProcess) -> None:
    with anyio.fail_after(10):
        async with call.connect(_endpoint(worker_v1)) as conn:
            with pytest.raises(UnknownMethod) as info:
                await conn.stub(v1.Inventory, name="tests.compat.Other").add("x", 1)  # type: ignore[misc]
    assert info.value.message.startswith("tests.compat.Other.add: the server does not serve this method")
    assert SERVED in info.value.message


@pytest.mark.parametrize(("client", "server"), [(v1, "v2"), (v2, "v1"), (v1, "v1")])
async def test_declared_exceptions_come_back_as_their_class(
    client: ModuleType, server: str, worker_v1: WorkerProcess, worker_v2: WorkerProcess
) -> None:
    worker = worker_v1 if server == "v1" else worker_v2
    with anyio.fail_after(10):
        async with call.connect(_endpoint(worker)) as conn:
            inventory = conn.stub(client.Inventory)
            try:
                await inventory.take("sku-1", 5)
            except client.OutOfStock as exc:  # the client's own class, rebuilt from its args
                assert type(exc) is client.OutOfStock
                assert exc.args == ("sku-1", 3)
                remote = remote_details(exc)
                assert remote is exc.__cause__
                assert remote is not None
                assert remote.code is ErrorCode.UNKNOWN
                assert remote.remote_type == "tests.compat.OutOfStock"
                assert "raise OutOfStock(sku, 3)" in remote.remote_traceback  # a local caller sees it
            else:
                pytest.fail("no OutOfStock")
            # A declared RemoteError subclass keeps its code.
            with pytest.raises(client.Refused) as refused:
                await inventory.take("sku-1", -1)
            assert type(refused.value) is client.Refused
            assert refused.value.code is ErrorCode.FAILED_PRECONDITION
            assert refused.value.message == "cannot take -1 of 'sku-1'"
            assert remote_details(refused.value) is refused.value
            # Undeclared: a RemoteError, as always.
            with pytest.raises(RemoteError) as undeclared:
                await inventory.fail("key")
            assert type(undeclared.value) is RemoteError
            assert undeclared.value.remote_type == "KeyError"
            assert undeclared.value.remote_args is None


async def test_a_class_the_client_did_not_declare_is_never_instantiated(
    worker_v1: WorkerProcess, worker_v2: WorkerProcess
) -> None:
    before = v1.Undeclared.made
    with anyio.fail_after(10):
        for worker in (worker_v2, worker_v1):
            async with call.connect(_endpoint(worker)) as conn:
                with pytest.raises(RemoteError) as info:
                    await conn.stub(v1.Inventory).fail("x")  # type: ignore[misc]
                # Its name is on the wire, and from v2 even with args: v1 never declared it.
                assert type(info.value) is RemoteError
                assert info.value.remote_type == "tests.compat_v1.Undeclared"
                assert (info.value.remote_args is not None) == (worker is worker_v2)
    assert v1.Undeclared.made == before


def test_a_declared_exception_is_not_logged_as_a_handler_failure(caplog: pytest.LogCaptureFixture) -> None:
    from callrt.connection._logs import LogLimiter, handler_failed

    limiter = LogLimiter()
    with caplog.at_level("DEBUG", logger="callrt"):
        handler_failed(limiter, "tests.compat.Inventory.take", v2.OutOfStock("x", 3), "peer")  # part of the contract
        handler_failed(limiter, "tests.compat.Inventory.fail", KeyError("k"), "peer")  # unexpected
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["tests.compat.Inventory.fail failed for peer"]


@pytest.mark.parametrize("policy", [False, True], ids=["no-policy", "access-policy"])
async def test_what_is_served_is_listed_only_without_an_access_policy(policy: bool) -> None:
    from callrt.access import AllowList

    options = call.ServerOptions(access=AllowList({"*": ["*"]}) if policy else None)
    with anyio.fail_after(10):
        async with call.start_server(f"memory://compat-served-{policy}", v1.Inventory(), options=options) as server:
            async with call.connect(str(server.endpoint)) as conn:
                with pytest.raises(UnknownMethod) as info:
                    await conn.stub(v2.Inventory).count()  # type: ignore[misc]
    message = info.value.message
    assert message.startswith("tests.compat.Inventory.count: the server does not serve this method (no handler")
    assert ("this server serves" in message) is not policy


@component(name="tests.compat.Front", errors={"tests.compat.OutOfStock": v2.OutOfStock})
class Front:
    """Calls the inventory behind it and lets its errors escape."""

    inventory: Any = None

    async def take(self, sku: str, qty: int) -> int:
        return await Front.inventory.take(sku, qty)  # type: ignore[no-any-return]


async def test_a_declared_exception_passes_through_a_nested_call() -> None:
    with anyio.fail_after(10):
        async with (
            call.start_server("memory://compat-back", v2.Inventory()),
            call.connect("memory://compat-back") as back,
            call.start_server("memory://compat-front", Front()),
            call.connect("memory://compat-front") as front,
        ):
            Front.inventory = back.stub(v2.Inventory)
            try:
                with pytest.raises(v2.OutOfStock) as info:
                    await front.stub(Front).take("sku-9", 7)
            finally:
                Front.inventory = None
    assert info.value.args == ("sku-9", 3)
    remote = remote_details(info.value)
    assert remote is not None
    assert remote.remote_type == "tests.compat.OutOfStock"
