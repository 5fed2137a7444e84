"""Components for tests of how handlers run: in worker threads, inline, with deadlines, across signals."""

from __future__ import annotations

import os
import sys
import threading
import time

import anyio

from callrt import call, component, inline, not_retriable


@component(name="tests.Handlers")
class Handlers:
    def blocking(self, seconds: float) -> int:
        """A plain def that blocks (a sync database driver, say): it runs in a worker thread."""
        time.sleep(seconds)
        return threading.get_ident()

    @inline
    def loop_thread(self) -> int:
        return threading.get_ident()

    @inline
    def hog(self, seconds: float) -> None:
        """An inline handler that (wrongly) blocks the loop: the server logs it."""
        time.sleep(seconds)

    async def ahog(self, seconds: float) -> None:
        """An async handler that (wrongly) blocks the loop before any await: the server logs it too."""
        time.sleep(seconds)  # noqa: ASYNC251  (that is the point)

    async def ping(self) -> str:
        return "pong"

    async def deadlines(self, pause: float) -> tuple[float | None, float, float]:
        """The call's deadline, and what anyio sees before and after the handler's first suspension."""
        current = call.current_call()
        assert current is not None
        before = anyio.current_effective_deadline()
        await anyio.sleep(pause)
        return current.deadline, before, anyio.current_effective_deadline()

    async def whose(self, pause: float) -> tuple[str, str]:
        """The caller's tag (metadata) before and after a suspension: other calls run inline meanwhile."""
        current = call.current_call()
        assert current is not None
        if pause:
            await anyio.sleep(pause)
        after = call.current_call()
        assert after is not None
        return current.metadata["tag"], after.metadata["tag"]

    async def scoped(self, pause: float) -> tuple[bool, bool]:
        """A cancel scope across the handler's first suspension: it must end on the task it began on."""
        task = anyio.get_current_task().id
        with anyio.move_on_after(pause / 2) as scope:
            await anyio.sleep(pause)
        return scope.cancelled_caught, anyio.get_current_task().id == task

    @not_retriable
    async def slow(self, seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"


def main() -> None:
    """``python -m tests.handler_components ADDRESS BACKEND``: what a user's worker does, nothing more."""
    import callrt

    callrt.run(call.serve, sys.argv[1], Handlers(), backend=sys.argv[2])
    print("clean exit", os.getpid(), flush=True)


if __name__ == "__main__":
    main()
