"""Health: ``callrt.Health.check`` answers per component, as the application says, and NOT_SERVING while draining."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from callrt import call, component
from callrt.connection.server import Server
from callrt.health import HEALTH, HealthAPI, Status, watch
from callrt.keys import make_method_key
from callrt.testing import WorkerProcess
from tests.health_components import ReplicaAPI

pytestmark = pytest.mark.anyio


@component(name="test.Gate")
class Gate:
    def __init__(self) -> None:
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def hold(self) -> str:
        self.started.set()
        await self.release.wait()
        return "released"


def _check_in_process(server: Server, component: str) -> str:
    """The registered handler itself: a draining server's connections take no new calls."""
    entry = server.handlers.get(make_method_key(HEALTH, "check"))
    assert entry is not None
    result = entry.handler(msgspec.msgpack.encode([component]))
    assert isinstance(result, bytes)
    return msgspec.msgpack.decode(result, type=str)


async def test_served_unknown_and_set_by_the_application() -> None:
    with anyio.fail_after(10):
        async with call.start_server("memory://health", Gate()) as server:
            async with call.connect("memory://health") as client:
                health = client.stub(HealthAPI)
                assert await health.check("") == "SERVING"
                assert await health.check("test.Gate") == "SERVING"
                assert await health.check("callrt.Health") == "SERVING"
                assert await health.check("test.Nothing") == "SERVICE_UNKNOWN"

                server.set_health("test.Gate", serving=False)
                assert await health.check("test.Gate") == "NOT_SERVING"
                assert await health.check("") == "SERVING"
                server.set_health("", serving=False)
                assert await health.check("") == "NOT_SERVING"
                server.set_health("test.Gate", serving=True)
                server.set_health("", serving=True)
                assert await health.check("test.Gate") == "SERVING"
                assert await health.check("") == "SERVING"
                server.set_health("test.Later", serving=True)  # a name the application announces
                assert await health.check("test.Later") == "SERVING"


async def test_a_draining_server_is_not_serving() -> None:
    gate = Gate()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            server = await tg.start(
                lambda task_status: call.serve("memory://health-drain", gate, task_status=task_status)
            )
            async with call.connect("memory://health-drain") as client:
                assert await client.stub(HealthAPI).check("test.Gate") == "SERVING"
                done = anyio.Event()

                async def in_flight() -> None:
                    assert await client.stub(Gate).hold() == "released"
                    done.set()

                tg.start_soon(in_flight)
                await gate.started.wait()
                assert _check_in_process(server, "") == "SERVING"
                server.stop()  # drains: the call in flight keeps the server draining until released
                (replica,) = client.replicas.values()
                assert replica.session is not None
                await replica.session.goaway.wait()  # sent after the flag is set
                assert server.draining
                for name in ("", "test.Gate", "callrt.Health", "test.Nothing"):
                    assert _check_in_process(server, name) == "NOT_SERVING"
                gate.release.set()
                await done.wait()  # the call in flight finished through the drain


async def test_watch_streams_each_change_and_ends_when_the_server_drains() -> None:
    with anyio.fail_after(10):
        async with call.start_server("memory://health-watch", Gate()) as server:
            async with call.connect("memory://health-watch") as client, anyio.create_task_group() as tg:
                seen: list[Status] = []
                async for status in watch(client.stub(HealthAPI), "test.Gate", interval=60):
                    seen.append(status)  # interval=60: a poll would not see the changes in time
                    if len(seen) == 1:
                        server.set_health("test.Gate", serving=False)
                    elif len(seen) == 2:
                        server.set_health("test.Gate", serving=True)
                    elif len(seen) == 3:
                        server.set_health("test.Gate", serving=True)  # no change: nothing sent
                        server.set_health("", serving=False)  # another component: nothing sent
                        tg.start_soon(server.drain)  # NOT_SERVING, then the stream ends
                assert seen == ["SERVING", "NOT_SERVING", "SERVING", "NOT_SERVING"]


async def test_watch_of_a_worker_sees_what_its_application_sets() -> None:
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.health_components:Replica"]) as worker, anyio.fail_after(10):
        async with call.connect(worker.endpoint) as client:
            replica, seen = client.stub(ReplicaAPI), []
            async with client.stub(HealthAPI).watch("tests.Replica") as statuses:
                async for status in statuses:
                    seen.append(status)
                    if len(seen) == 1:
                        await replica.set_serving("tests.Replica", False)
                    else:
                        break
            assert seen == ["SERVING", "NOT_SERVING"]
            await replica.set_serving("tests.Replica", True)


async def test_health_without_reflection() -> None:
    options = call.ServerOptions(reflection=False)
    with anyio.fail_after(10):
        async with call.start_server("memory://health-noref", Gate(), options=options):
            async with call.connect("memory://health-noref") as client:
                assert await client.stub(HealthAPI).check("test.Gate") == "SERVING"
