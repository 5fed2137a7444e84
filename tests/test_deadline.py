"""callrt's fast effective-deadline lookup agrees with anyio's public one in every scope shape."""

from __future__ import annotations

import math
from collections.abc import AsyncIterable, AsyncIterator

import anyio
import pytest

from callrt._deadline import deadline_function

pytestmark = pytest.mark.anyio


async def test_matches_anyio_in_every_scope_shape(anyio_backend: object) -> None:
    effective = deadline_function()
    assert effective() == anyio.current_effective_deadline()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(50):
            assert effective() == anyio.current_effective_deadline() < math.inf
            with anyio.move_on_after(20) as inner:
                assert effective() == anyio.current_effective_deadline()
                inner.deadline += 100  # the outer scope's deadline is now the nearer one
                assert effective() == anyio.current_effective_deadline()
                with anyio.CancelScope(shield=True):
                    assert effective() == anyio.current_effective_deadline() == math.inf
                inner.cancel()
                assert effective() == anyio.current_effective_deadline() == -math.inf

        async def in_child() -> None:
            with anyio.move_on_after(7):
                assert effective() == anyio.current_effective_deadline()

        tg.start_soon(in_child)
    assert effective() == anyio.current_effective_deadline()


async def test_calls_in_a_cancelled_or_endless_scope_do_not_break_the_request(anyio_backend: object) -> None:
    """-inf (a cancelled scope) and a far deadline both fit the request's deadline field."""
    from callrt import call, component

    @component(name="tests.deadline.Echo")
    class Echo:
        def echo(self, value: int) -> int:
            return value

    async with call.start_server("tcp://127.0.0.1:0", Echo()) as server:
        async with call.connect(call.ConstantResolver([server.endpoint])) as conn:
            echo = conn.stub(Echo)
            with anyio.fail_after(1e30):  # far beyond the u64 microseconds the field holds
                assert await echo.echo(3) == 3
            with anyio.CancelScope() as scope:
                scope.cancel()
                await echo.echo(4)  # the call is cancelled, not failed by the deadline's encoding
            assert scope.cancelled_caught


async def test_a_call_from_a_cancelled_scope_is_cancelled_before_anything_is_sent(anyio_backend: object) -> None:
    """Unary, stream, fan-out and affinity calls made in a cancelled scope raise its cancellation, sending nothing.

    A request sent anyway would carry no time left, and on asyncio the server's
    DeadlineExceeded could reach the caller before its own cancellation (an attack
    test's protected client once saw exactly that in CI).
    """
    from callrt import call, component
    from callrt.testing import FaultProxy

    @component(name="tests.deadline.Counter")
    class Counter:
        def echo(self, value: int) -> int:
            return value

        async def count(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i

    with anyio.fail_after(10):
        async with (
            call.start_server("tcp://127.0.0.1:0", Counter()) as server,
            FaultProxy(str(server.endpoint)) as proxy,
            call.connect(call.ConstantResolver([proxy.endpoint])) as conn,
        ):
            counter = conn.stub(Counter)
            assert await counter.echo(1) == 1
            (to_server,) = [c.to_server for c in proxy.connections]
            before = to_server.received  # the reply came back, so the request went through
            assert await counter.echo(2) == 2
            one_call = to_server.received - before
            reached = []
            attempts = {
                "unary": lambda: counter.echo(3),
                "stream": lambda: _drain(counter.count(3)),
                "fan-out": lambda: _drain(conn.multi(Counter).echo(3)),
                "affinity": lambda: conn.by_affinity(Counter).echo(3),
            }
            for kind, attempt in attempts.items():
                before = to_server.received
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await attempt()
                    reached.append(kind)
                assert scope.cancelled_caught, kind
                assert await counter.echo(4) == 4  # after anything the cancelled call sent
                assert to_server.received - before == one_call, f"{kind}: the cancelled call sent frames"
            assert reached == []


async def _drain(items: AsyncIterable[object]) -> None:
    async for _ in items:
        pass
