"""A resolver you drive by hand, for tests of clients: set endpoints, inject errors, watch the calls.

:class:`ManualResolver` keeps the resolver contract exactly (Service Weaver's):
``resolve(None)`` answers at once; ``resolve(version)`` blocks until a newer set
exists, or, with ``poll_interval``, returns ``version`` itself after that long
to mean "nothing new, ask again later".
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence

import anyio
import anyio.lowlevel

from ..endpoints import Endpoint, parse_endpoint
from ..resolvers import Resolver, Version

__all__ = ("ManualResolver", "ResolverError")


class ResolverError(Exception):
    """The default error :meth:`ManualResolver.fail_next` injects."""


class ManualResolver(Resolver):
    """A non-constant resolver whose endpoints the test sets with :meth:`set`.

    Versions are ``"1"``, ``"2"``, …; every :meth:`set` makes a new one (even
    for the same endpoints) and wakes every caller blocked in ``resolve``.

    :param endpoints: the initial set (version ``"1"``).
    :param poll_interval: when given, a blocked ``resolve(v)`` returns ``(endpoints, v)``
        after this many seconds without a change ("ask again later").

    What the test can watch: :attr:`calls` (``resolve`` calls so far, failed
    ones included), :attr:`call_times` (``anyio.current_time()`` of each, so a
    test on a virtual clock sees virtual times), :attr:`versions_asked`
    (the ``version`` argument of each), :attr:`waiting` (callers blocked now)
    and :attr:`errors_raised`.
    """

    def __init__(self, endpoints: Iterable[Endpoint | str] = (), *, poll_interval: float | None = None) -> None:
        self._endpoints: tuple[Endpoint, ...] = tuple(parse_endpoint(e) for e in endpoints)
        self._version = 1
        self._poll_interval = poll_interval
        self._changed: anyio.Event | None = None  # made in the first resolve: Events need a running loop
        self._failures: deque[BaseException] = deque()
        self._waiting_changed: anyio.Event | None = None
        self.calls = 0
        self.call_times: list[float] = []
        self.wall_times: list[float] = []
        self.versions_asked: list[Version | None] = []
        self.waiting = 0
        self.errors_raised = 0

    # -- driving it ------------------------------------------------------------

    @property
    def version(self) -> Version:
        return str(self._version)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    def set(self, endpoints: Iterable[Endpoint | str]) -> Version:
        """Publish a new set of endpoints under a new version; returns that version."""
        self._endpoints = tuple(parse_endpoint(e) for e in endpoints)
        self._version += 1
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        return self.version

    def fail_next(self, n: int, exc: BaseException | None = None) -> None:
        """Make the next ``n`` calls of ``resolve`` raise ``exc`` (default: :class:`ResolverError`).

        A caller already blocked in ``resolve`` is not affected.
        """
        for _ in range(n):
            self._failures.append(exc if exc is not None else ResolverError("injected resolver error"))

    @property
    def failures_pending(self) -> int:
        return len(self._failures)

    async def wait_for_waiters(self, n: int = 1) -> None:
        """Return once at least ``n`` callers are blocked in ``resolve`` (bound it with a timeout)."""
        while self.waiting < n:
            if self._waiting_changed is None:
                self._waiting_changed = anyio.Event()
            await self._waiting_changed.wait()

    # -- the Resolver contract -------------------------------------------------

    def is_constant(self) -> bool:
        return False

    async def resolve(self, version: Version | None) -> tuple[Sequence[Endpoint], Version | None]:
        self.calls += 1
        self.call_times.append(anyio.current_time())
        self.wall_times.append(time.monotonic())
        self.versions_asked.append(version)
        await anyio.lowlevel.checkpoint()  # a resolver is a real await point, as network ones are
        if self._failures:
            self.errors_raised += 1
            raise self._failures.popleft()
        if version is None or version != self.version:
            return self._endpoints, self.version
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        self.waiting += 1
        self._wake_waiter_watchers()
        try:
            if self._poll_interval is None:
                await changed.wait()
            else:
                with anyio.move_on_after(self._poll_interval):
                    await changed.wait()
        finally:
            self.waiting -= 1
            self._wake_waiter_watchers()
        return self._endpoints, self.version

    def _wake_waiter_watchers(self) -> None:
        event, self._waiting_changed = self._waiting_changed, None
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        return f"ManualResolver(v{self._version}: [{', '.join(map(str, self._endpoints))}])"
