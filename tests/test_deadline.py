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
