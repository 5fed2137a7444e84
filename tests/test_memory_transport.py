"""The in-memory transport as a user's unit test meets it: serve and call in one process, on every backend.

Same behaviour as over a socket: results, application errors, deadlines
(enforced on the server too), cancellation and the drain after goaway.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from callrt import call, component, errors
from tests.components import Echo, Lab, events

pytestmark = pytest.mark.anyio


@component(name="tests.Gate")
class Gate:
    def __init__(self) -> None:
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def hold(self) -> str:
        self.started.set()
        await self.release.wait()
        return "released"


async def test_calls_errors_deadlines_and_drain(tmp_path: Path) -> None:
    marker = str(tmp_path / "nap")
    with anyio.fail_after(20):
        async with call.start_server("memory://unit", Echo(), Lab()) as server:
            assert str(server.endpoint) == "memory://unit"
            async with call.connect("memory://unit") as client:
                lab = client.stub(Lab)
                assert await client.stub(Echo).echo(b"hi") == b"hi"
                assert await lab.add_async(2, 3) == 5
                with pytest.raises(errors.RemoteError, match="boom") as info:
                    await lab.fail("boom")
                assert info.value.remote_type == "ValueError"
                # The deadline travels and the server cancels the handler when it passes.
                with pytest.raises(TimeoutError):
                    with anyio.fail_after(0.2):
                        await lab.nap(30, marker)
                with anyio.fail_after(5):
                    while "cancelled" not in [e for e, _, _ in events(marker)]:  # noqa: ASYNC110
                        await anyio.sleep(0.01)  # the server's cancellation lands on its own schedule


async def test_a_call_in_flight_completes_through_the_drain() -> None:
    gate = Gate()
    results: list[str] = []
    done = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            server = await tg.start(lambda task_status: call.serve("memory://drain", gate, task_status=task_status))
            async with call.connect("memory://drain") as client:

                async def in_flight() -> None:
                    results.append(await client.stub(Gate).hold())
                    done.set()

                tg.start_soon(in_flight)
                await gate.started.wait()
                server.stop()  # goaway; the call in flight has drain_grace to finish
                (replica,) = client.replicas.values()
                assert replica.session is not None
                await replica.session.goaway.wait()
                gate.release.set()
                await done.wait()
    assert results == ["released"]


async def test_a_name_is_taken_once_and_free_after_the_server_stops() -> None:
    with anyio.fail_after(10):
        async with call.start_server("memory://once", Echo()):
            with pytest.raises(OSError, match="already listens"):
                async with call.start_server("memory://once", Echo()):
                    pass
        async with call.start_server("memory://once", Echo()), call.connect("memory://once") as client:
            assert await client.stub(Echo).echo(b"again") == b"again"


async def test_no_server_is_unreachable() -> None:
    with anyio.fail_after(10):
        async with call.connect("memory://nobody") as client:
            with pytest.raises(errors.Unreachable):
                await client.stub(Echo, options=call.CallOptions(fail_fast=True)).echo(b"x")


async def test_connect_takes_an_endpoint_or_a_list_of_them() -> None:
    with anyio.fail_after(10):
        async with call.start_server("memory://endpoint", Echo()) as server:
            for target in (server.endpoint, [server.endpoint], str(server.endpoint)):
                async with call.connect(target) as client:
                    assert await client.stub(Echo).echo(b"x") == b"x"
