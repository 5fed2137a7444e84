"""callrt's fast effective-deadline lookup agrees with anyio's public one in every scope shape."""

from __future__ import annotations

import math

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
