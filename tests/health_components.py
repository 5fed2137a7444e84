"""A component for tests of health-aware balancing, served by worker processes: it says who it is,
and sets its own server's health (:func:`callrt.health.set_health`), as an application would."""

from __future__ import annotations

import os
from typing import Protocol

import anyio

from callrt import component, inline, interface
from callrt.health import set_health


@interface(name="tests.Replica")
class ReplicaAPI(Protocol):
    async def pid(self) -> int: ...

    async def set_serving(self, component: str, serving: bool) -> None: ...

    async def hold(self, seconds: float) -> int: ...


@component(implements=ReplicaAPI)
class Replica:
    @inline
    def pid(self) -> int:
        return os.getpid()

    @inline
    def set_serving(self, component: str, serving: bool) -> None:
        """``component`` ("" for the whole server) answers SERVING or NOT_SERVING from now on."""
        set_health(component, serving=serving)

    async def hold(self, seconds: float) -> int:
        """A call in flight for ``seconds``; then which process served it."""
        await anyio.sleep(seconds)
        return os.getpid()
