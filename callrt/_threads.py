"""Plain ``def`` handlers in worker threads, never more threads than the limiter's tokens.

anyio's ``to_thread.run_sync(..., abandon_on_cancel=True)`` answers a cancelled
call at once and leaves its thread running, as a server must (the caller's
deadline has passed; its reply cannot wait for a blocked database driver).
But on asyncio it gives the limiter's token back at that moment, while the
thread still runs: a stream of timed-out blocking calls would start a new
thread for each, without bound. :func:`run_in_thread` holds the token until
the thread's function has really returned (trio's own semantics, on both
backends), so ``ServerOptions.handler_threads`` bounds the live threads.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import sniffio
from anyio import to_thread
from anyio.lowlevel import RunVar

__all__ = ("run_in_thread",)

T = TypeVar("T")

# The threads' own limit is the caller's limiter: to_thread's must never make a thread wait.
_UNBOUNDED: RunVar[anyio.CapacityLimiter] = RunVar("callrt_unbounded_threads")

# The states of one call's thread; each moves forward only, under the call's lock.
_WAITING, _RUNNING, _ABANDONED, _DONE = range(4)


class _Call:
    """One function to run in a thread, with its token: who gives the token back, and when."""

    __slots__ = ("abandoned_on", "borrower", "limiter", "lock", "state")

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self.limiter = limiter
        self.lock = threading.Lock()
        self.state = _WAITING
        self.borrower = object()
        # Set when the call gives up while its thread runs: how the thread reaches the loop.
        self.abandoned_on: Callable[[Callable[[], object]], object] | None = None

    def release(self) -> None:
        self.limiter.release_on_behalf_of(self.borrower)


async def run_in_thread(fn: Callable[[Any], T], arg: Any, limiter: anyio.CapacityLimiter | None) -> T:
    """``fn(arg)`` in a worker thread, holding one of ``limiter``'s tokens until ``fn`` has returned.

    Cancelled (the call's deadline, the client's cancel), it raises at once as
    anyio's ``abandon_on_cancel=True`` does and the thread finishes on its own;
    its token is given back when it does, on the event loop. Waiting for a
    token is cancellable like any wait.
    """
    if limiter is None:
        limiter = to_thread.current_default_thread_limiter()
    call = _Call(limiter)
    await limiter.acquire_on_behalf_of(call.borrower)

    def body(arg: Any) -> T:
        with call.lock:
            if call.state != _WAITING:  # the call gave up before its thread started: the loop freed the token
                raise RuntimeError("abandoned before it started")
            call.state = _RUNNING
        try:
            return fn(arg)
        finally:
            with call.lock:
                abandoned_on, call.state = call.abandoned_on, _DONE
            if abandoned_on is not None:
                try:
                    abandoned_on(call.release)
                except RuntimeError:
                    pass  # the event loop has finished: no limiter is left to give the token to

    try:
        unbounded = _UNBOUNDED.get()
    except LookupError:
        unbounded = anyio.CapacityLimiter(math.inf)
        _UNBOUNDED.set(unbounded)
    try:
        return await to_thread.run_sync(body, arg, abandon_on_cancel=True, limiter=unbounded)
    finally:
        with call.lock:
            running = call.state == _RUNNING
            if running:  # the thread gives the token back when fn returns
                call.state, call.abandoned_on = _ABANDONED, _loop_callback()
            elif call.state == _WAITING:
                call.state = _DONE  # a thread that picks it up now does nothing
        if not running:
            call.release()


def _loop_callback() -> Callable[[Callable[[], object]], object]:
    """How another thread schedules a function on this event loop, without waiting for it."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    return asyncio.get_running_loop().call_soon_threadsafe
