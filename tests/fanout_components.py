"""A fleet of replicas for the fan-out and affinity tests, each with a role from ``FLEET_ROLE``.

Served by worker processes (``tests.fanout_components:Fleet``), one role each:

- ``"ok"`` answers at once;
- ``"failing"`` raises :class:`Overloaded` from :meth:`Fleet.work`;
- ``"slow"`` answers :meth:`Fleet.work` only once :meth:`Fleet.release` opens its gate.

The affinity method :meth:`Fleet.assign` claims what the request says for the
replica's role (none: it declines); the slow replica's claim waits for its gate
when the request names one. Gates are named by the test, so tests sharing the
workers never open each other's.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager

import anyio

from callrt import affinity, component
from callrt.endpoints import Endpoint
from callrt.health import set_health
from callrt.testing import WorkerProcess


class Overloaded(Exception):
    """What the failing replica raises: declared, so the caller gets it back by type."""


def _claim_of(fleet: Fleet, claims: dict[str, float], gate: str = "", fail: str = "") -> float | Awaitable[float]:
    if fleet.role == fail:
        raise RuntimeError(f"the affinity function of {fleet.role} failed")
    if gate and fleet.role == "slow":
        return fleet._wait_then(gate, claims.get(fleet.role, -1.0))  # an async claim, held by the gate
    return claims.get(fleet.role, -1.0)


@component(name="tests.Fleet", errors=(Overloaded,))
class Fleet:
    def __init__(self) -> None:
        self.role = os.environ.get("FLEET_ROLE", "ok")
        self._gates: dict[str, anyio.Event] = {}

    def _gate(self, name: str) -> anyio.Event:
        gate = self._gates.get(name)
        if gate is None:
            gate = self._gates[name] = anyio.Event()
        return gate

    async def _wait_then(self, gate: str, value: float) -> float:
        await self._gate(gate).wait()
        return value

    async def whoami(self) -> str:
        return self.role

    async def work(self, gate: str) -> str:
        if self.role == "failing":
            raise Overloaded(f"{self.role} is overloaded")
        if self.role == "slow":
            self._gate(f"started {gate}").set()
            try:
                await self._gate(gate).wait()
            except anyio.get_cancelled_exc_class():
                self._gate(f"cancelled {gate}").set()  # the caller gave up: wait_cancelled() sees it
                raise
        return self.role

    async def wait_started(self, gate: str) -> None:
        """Return once a :meth:`work` call waiting for ``gate`` is running here."""
        await self._gate(f"started {gate}").wait()

    async def wait_cancelled(self, gate: str) -> None:
        """Return once a :meth:`work` call waiting for ``gate`` was cancelled."""
        await self._gate(f"cancelled {gate}").wait()

    async def release(self, gate: str) -> None:
        self._gate(gate).set()

    def set_serving(self, serving: bool) -> None:
        """What ``callrt.Health`` answers for this replica's server from now on."""
        set_health("", serving=serving)

    async def ticks(self, n: int) -> AsyncIterator[int]:
        """A stream method: fan-out and affinity calls refuse it (they are unary)."""
        for i in range(n):
            yield i

    @affinity(_claim_of)
    async def assign(self, claims: dict[str, float], gate: str = "", fail: str = "") -> str:
        return self.role


ROLES = ("ok", "failing", "slow")


@contextmanager
def fleet() -> Iterator[dict[str, WorkerProcess]]:
    """Three worker processes on TCP, one per role (the failing one on trio), stopped afterwards."""
    workers: dict[str, WorkerProcess] = {}
    try:
        for role in ROLES:
            backend = "trio" if role == "failing" else "asyncio"
            worker = WorkerProcess(
                "tcp://127.0.0.1:0", ["tests.fanout_components:Fleet"], backend=backend, env={"FLEET_ROLE": role}
            )
            workers[role] = worker
            worker.start()
        yield workers
    finally:
        for worker in workers.values():
            worker.kill()  # nothing to drain: every test released what it held


def endpoints(workers: dict[str, WorkerProcess]) -> dict[Endpoint, str]:
    """The role of each worker, by endpoint."""
    out = {}
    for role, worker in workers.items():
        assert worker.endpoint is not None
        out[worker.endpoint] = role
    return out


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
