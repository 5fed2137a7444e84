"""When a failed call is tried again: the retry rule, capped jittered backoff, and the retry budget.

A call that fails with a communication error is retried on a new pick with
capped, jittered backoff, within its deadline and a retry budget. A
``@not_retriable`` method is retried only when the request provably never
left the client (no replica, or the connection died before the frame was
handed to the socket).
"""

from __future__ import annotations

import math
import random
from collections import deque

import anyio

from .. import telemetry
from ..context import CallOptions
from ..errors import CommunicationError, LocalProtocolError, SessionLost, Unreachable
from ..options import RetryPolicy

__all__ = ("RetryBudget", "Retrier")


class RetryBudget:
    """Retries allowed: ``ratio`` of recent calls plus ``min_per_second`` (Finagle's budget).

    A call costs one increment of :attr:`calls`, with no clock read: the
    client calls :meth:`tick` once a second, which closes that second's
    counts into a window of ``budget_window`` seconds.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self.calls = 0  # ever made; the per-second counts are differences of it
        self._calls_at_tick = 0
        self._retries = 0  # in the current second
        self._seconds = max(1, math.ceil(policy.budget_window))
        self._window: deque[tuple[int, int]] = deque(maxlen=self._seconds - 1)  # (calls, retries) per past second

    def tick(self) -> None:
        self._window.append((self.calls - self._calls_at_tick, self._retries))
        self._calls_at_tick, self._retries = self.calls, 0

    def try_spend(self) -> bool:
        p = self._policy
        calls = self.calls - self._calls_at_tick + sum(c for c, _ in self._window)
        retries = self._retries + sum(r for _, r in self._window)
        # Finagle's reserve: a whole window's worth of the minimum, from the start.
        if retries >= p.budget_ratio * calls + p.budget_min_per_second * self._seconds:
            return False
        self._retries += 1
        return True


class Retrier:
    """One client's retry decisions, its budget, and its counts."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.budget = RetryBudget(policy)
        self.retries = 0

    async def tick_budget(self) -> None:
        """Close each second's counts into the budget's window, while the client lives."""
        while True:
            await anyio.sleep(1)
            self.budget.tick()

    def delay(
        self, exc: CommunicationError, retriable: bool, options: CallOptions | None, attempt: int, deadline: float
    ) -> float | None:
        """How long to wait before retrying a call that failed with ``exc``, or ``None``: don't.

        ``retriable`` is the method's own rule; ``options.retry`` overrides it.
        """
        retry = options.retry if options is not None and options.retry is not None else retriable
        never_sent = isinstance(exc, Unreachable) or (isinstance(exc, SessionLost) and not exc.sent)
        if isinstance(exc, LocalProtocolError) or not (retry or never_sent):
            return None
        policy = self.policy
        if attempt >= policy.max_attempts:
            return None
        if not self.budget.try_spend():
            telemetry.retry_refused()
            return None
        delay = min(policy.max_backoff, policy.initial_backoff * policy.multiplier ** (attempt - 1))
        delay *= 1 - policy.jitter * random.random()
        if anyio.current_time() + delay >= deadline:
            return None
        self.retries += 1
        return delay
