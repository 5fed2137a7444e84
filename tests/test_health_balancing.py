"""Clients leave replicas whose health check says NOT_SERVING out of balancing, and take them back.

Two worker processes serve ``tests.Replica``; the application in a worker turns its own health
off and on (``callrt.health.set_health``); the client, polling each replica's ``callrt.Health``
every few milliseconds here, must send every call to the serving one, spread them again once both
serve, and, when none serves, wait and then fail with an error that says NOT_SERVING.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator

import anyio
import pytest

from callrt import call
from callrt.access import AllowList
from callrt.client import Client, ReplicaState
from callrt.endpoints import Endpoint
from callrt.errors import NoReplicaInTime, Unreachable
from callrt.options import ClientOptions
from callrt.testing import ManualResolver, WorkerProcess
from tests.health_components import Replica, ReplicaAPI

pytestmark = pytest.mark.anyio

FAST = ClientOptions(health_interval=0.01, keepalive_timeout=2.0)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """Two workers, one on asyncio and one on trio; tests leave both SERVING."""
    a = WorkerProcess("tcp://127.0.0.1:0", ["tests.health_components:Replica"], backend="asyncio")
    b = WorkerProcess("tcp://127.0.0.1:0", ["tests.health_components:Replica"], backend="trio")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.kill()
        b.kill()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition another process brings about (checked every few ms; the test's fail_after bounds it)."""
    while not condition():  # noqa: ASYNC110
        await anyio.sleep(0.002)
    assert condition(), what


def endpoint(worker: WorkerProcess) -> Endpoint:
    assert worker.endpoint is not None
    return worker.endpoint


def state(client: Client, endpoint: Endpoint) -> ReplicaState | None:
    replica = client.replicas.get(endpoint)  # None until the client has heard of it from the resolver
    return None if replica is None else replica.state


async def set_serving(endpoint: Endpoint, component: str, serving: bool) -> None:
    """The worker's application changes its own health (through a client of its own)."""
    async with call.connect(endpoint, options=ClientOptions(health_interval=None)) as direct:
        await direct.stub(ReplicaAPI).set_serving(component, serving)


async def spread(stub: ReplicaAPI, n: int) -> Counter[int]:
    return Counter([await stub.pid() for _ in range(n)])


@pytest.mark.parametrize("component", ["tests.Replica", ""], ids=["component", "server"])
async def test_a_not_serving_replica_gets_no_calls_until_it_serves_again(
    pair: tuple[WorkerProcess, WorkerProcess], component: str
) -> None:
    a, b = pair
    ea, eb = endpoint(a), endpoint(b)
    with anyio.fail_after(20):
        async with call.connect(ManualResolver([ea, eb]), options=FAST) as client:
            stub = client.stub(ReplicaAPI)
            await until(lambda: all(r.state is ReplicaState.AVAILABLE for r in client.replicas.values()), "both up")
            assert set(await spread(stub, 20)) == {a.pid, b.pid}

            await set_serving(ea, component, False)
            try:
                await until(lambda: state(client, ea) is ReplicaState.NOT_SERVING, "a out")
                assert state(client, eb) is ReplicaState.AVAILABLE
                assert await spread(stub, 50) == {b.pid: 50}  # every call to the one that serves
            finally:
                await set_serving(ea, component, True)
            await until(lambda: state(client, ea) is ReplicaState.AVAILABLE, "a back")
            got = await spread(stub, 20)
            assert got == {a.pid: 10, b.pid: 10}  # round robin over both again


async def test_when_no_replica_serves_calls_wait_then_fail_saying_so(pair: tuple[WorkerProcess, WorkerProcess]) -> None:
    a, b = pair
    assert a.endpoint is not None and b.endpoint is not None
    options = ClientOptions(health_interval=0.01, keepalive_timeout=2.0, pick_timeout=0.3)
    with anyio.fail_after(20):
        async with call.connect(ManualResolver([a.endpoint, b.endpoint]), options=options) as client:
            stub = client.stub(ReplicaAPI)
            await until(lambda: all(r.state is ReplicaState.AVAILABLE for r in client.replicas.values()), "both up")
            await set_serving(a.endpoint, "", False)
            await set_serving(b.endpoint, "", False)
            try:
                await until(
                    lambda: all(r.state is ReplicaState.NOT_SERVING for r in client.replicas.values()), "both out"
                )
                with anyio.CancelScope(shield=True), pytest.raises(Unreachable) as raised:
                    await stub.pid()  # no deadline (the shield hides the test's): it waits pick_timeout
                message = str(raised.value)
                assert "tests.Replica.pid: no available replica among 2" in message
                assert "NOT_SERVING" in message and f"{a.endpoint} not_serving" in message, message
                with pytest.raises(NoReplicaInTime, match="NOT_SERVING"):  # a deadline: the same wait
                    with anyio.fail_after(0.3):
                        await stub.pid()

                # A call waits for a replica to serve again, as for one to connect.
                result: list[int] = []
                async with anyio.create_task_group() as tg:

                    async def waiting_call() -> None:
                        with anyio.fail_after(10):
                            result.append(await stub.pid())

                    tg.start_soon(waiting_call)
                    await set_serving(b.endpoint, "", True)
                assert result == [b.pid]
            finally:
                await set_serving(a.endpoint, "", True)
                await set_serving(b.endpoint, "", True)


async def test_health_off_uses_every_connected_replica(pair: tuple[WorkerProcess, WorkerProcess]) -> None:
    a, b = pair
    assert a.endpoint is not None and b.endpoint is not None
    options = ClientOptions(health_interval=None)
    with anyio.fail_after(20):
        async with call.connect(ManualResolver([a.endpoint, b.endpoint]), options=options) as client:
            stub = client.stub(ReplicaAPI)
            await set_serving(a.endpoint, "", False)
            try:
                await until(lambda: all(r.state is ReplicaState.AVAILABLE for r in client.replicas.values()), "up")
                endpoint = a.endpoint
                async with call.connect(endpoint, options=FAST) as watching:  # a client that does look
                    watching.stub(ReplicaAPI)
                    await until(lambda: state(watching, endpoint) is ReplicaState.NOT_SERVING, "seen")
                assert set(await spread(stub, 20)) == {a.pid, b.pid}
            finally:
                await set_serving(a.endpoint, "", True)


async def test_a_server_that_refuses_health_checks_counts_as_serving(caplog: pytest.LogCaptureFixture) -> None:
    """An access policy that does not list callrt.Health: the check is refused once, the replica stays."""
    caplog.set_level(logging.DEBUG, logger="callrt.client")
    options = call.ServerOptions(access=AllowList({"tests.Replica": ["*"]}))
    with anyio.fail_after(20):
        async with call.start_server("memory://health-refused", Replica(), options=options) as server:
            server.set_health("", serving=False)
            async with call.connect("memory://health-refused", options=FAST) as client:
                stub = client.stub(ReplicaAPI)
                await until(
                    lambda: any("does not answer callrt.Health.check" in r.getMessage() for r in caplog.records),
                    "the refusal",
                )
                (replica,) = client.replicas.values()
                assert replica.state is ReplicaState.AVAILABLE
                assert isinstance(await stub.pid(), int)


async def test_a_draining_server_is_draining_on_the_client_not_not_serving(
    pair: tuple[WorkerProcess, WorkerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM: the server answers NOT_SERVING, but its goaway already took the replica out (DRAINING);
    the call in flight on it finishes there, new calls go to the other."""
    caplog.set_level(logging.INFO, logger="callrt.client")
    a = pair[0]
    ea = endpoint(a)
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.health_components:Replica"]) as c:
        ec = endpoint(c)
        resolver = ManualResolver([ec])
        with anyio.fail_after(20):
            async with call.connect(resolver, options=FAST) as client:
                stub = client.stub(ReplicaAPI)
                held: list[int] = []
                async with anyio.create_task_group() as tg:

                    async def hold() -> None:
                        held.append(await stub.hold(1.0))

                    tg.start_soon(hold)
                    await until(lambda: client.replicas[ec].pending == 1, "the call in flight on c")
                    resolver.set([ec, ea])
                    await until(lambda: state(client, ea) is ReplicaState.AVAILABLE, "a up")
                    os.kill(c.pid, signal.SIGTERM)  # drains: NOT_SERVING to health checks, and a goaway
                    await until(lambda: state(client, ec) is ReplicaState.DRAINING, "c draining")
                    assert await spread(stub, 20) == {a.pid: 20}
                assert held == [c.pid]  # finished on c, through the drain
    assert not [r for r in caplog.records if "reports NOT_SERVING" in r.getMessage()]


async def test_set_health_reaches_running_servers_and_those_started_later() -> None:
    from callrt import health

    name = "tests.SetLater"
    try:
        with anyio.fail_after(10):
            async with (
                call.start_server("memory://health-set-1", Replica()),
                call.connect("memory://health-set-1") as c,
            ):
                check = c.stub(health.HealthAPI).check
                assert await check(name) == "SERVICE_UNKNOWN"
                health.set_health(name, serving=False)
                assert await check(name) == "NOT_SERVING"
            async with (
                call.start_server("memory://health-set-2", Replica()),
                call.connect("memory://health-set-2") as c,
            ):
                assert await c.stub(health.HealthAPI).check(name) == "NOT_SERVING"
    finally:
        health._said.pop(name, None)  # the process's setting, which other tests' servers would inherit
