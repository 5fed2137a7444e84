"""Health checking like gRPC's: every server answers ``callrt.Health.check(component)``.

The answer is ``"SERVING"``, ``"NOT_SERVING"`` or ``"SERVICE_UNKNOWN"``:

- ``""`` asks about the server as a whole: SERVING unless the application said otherwise;
- a component the server serves is SERVING unless the application said otherwise
  (``server.set_health("shop.Cart", serving=False)`` on the :class:`~callrt.connection.server.Server`
  that ``start_server`` gives, or ``task_group.start(serve, ...)`` returns);
- a name the server does not serve, and the application never set, is SERVICE_UNKNOWN;
- a draining server answers NOT_SERVING for everything.

Code without the ``Server`` at hand (a component served by ``callrt serve``, say) calls
:func:`set_health`: every server of this process, and those it starts later, answer so.

*Clients.* A client asks each replica it is connected to every
``ClientOptions.health_interval`` seconds (5 by default), for ``""`` and for the
components it has stubs of, and leaves a replica that reports NOT_SERVING out of
its balancing until it reports SERVING again (``callrt.client.replicas``).

*Watching.* ``callrt.Health.watch(component)`` is a server stream, as gRPC's
``Watch``: the status at once, then each change, until the server drains (its
last item is then NOT_SERVING). :func:`watch` follows it, and polls a server
older than streams; ``callrt health URL [Component]`` asks once.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from typing import Literal, Protocol

import anyio

from .component import component, inline, interface
from .connection.server import Server
from .errors import LocalProtocolError, UnknownMethod

__all__ = ("HEALTH", "Health", "HealthAPI", "Status", "add_health", "set_health", "watch")

HEALTH = "callrt.Health"
Status = Literal["SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]


@interface(name=HEALTH)
class HealthAPI(Protocol):
    """The health component's interface: a client's ``stub(HealthAPI)``."""

    async def check(self, component: str) -> Status: ...

    def watch(self, component: str) -> AsyncIterator[Status]:
        """The status of ``component`` now, then each time it changes; the stream ends when the server drains."""
        ...


@component(implements=HealthAPI)
class Health:
    """Answers for ``server``: its draining flag, what the application set, and what it serves."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._served: tuple[int, frozenset[str]] = (-1, frozenset())

    @inline
    def check(self, component: str) -> Status:
        server = self._server
        if server.draining:
            return "NOT_SERVING"
        said = server.health.get(component)
        if said is not None:
            return "SERVING" if said else "NOT_SERVING"
        if component == "" or component in self._names():
            return "SERVING"
        return "SERVICE_UNKNOWN"

    async def watch(self, component: str) -> AsyncIterator[Status]:
        server = self._server
        last: Status | None = None
        while True:
            version = server.health_version
            status = self.check(component)
            if status != last:
                last = status
                yield status
            if server.draining:
                return  # its connection is closing: a watch must not hold it open through the drain
            await server.health_change(version)

    def _names(self) -> frozenset[str]:
        handlers = self._server.handlers
        size, names = self._served
        if size != len(handlers):
            names = frozenset(name.rpartition(".")[0] for name in handlers.names())
            self._served = (len(handlers), names)
        return names


# What set_health() said in this process, and the servers it applies to (those with callrt.Health).
_said: dict[str, bool] = {}
_servers: weakref.WeakSet[Server] = weakref.WeakSet()


def add_health(server: Server) -> None:
    """Register ``callrt.Health`` in ``server``'s handlers, answering for ``server``."""
    server.handlers.add_handlers(None, Health(server))
    server.health.update(_said)
    _servers.add(server)


def set_health(component: str, *, serving: bool) -> None:
    """Make every server of this process answer SERVING or NOT_SERVING for ``component`` (``""``: the server).

    For code that does not hold the :class:`~callrt.connection.server.Server` (``Server.set_health``
    sets one server's), such as a component served by ``callrt serve``. Servers started later in
    this process answer so too; the latest call of either function decides.
    """
    _said[component] = serving
    for server in list(_servers):
        server.set_health(component, serving=serving)


async def watch(health: HealthAPI, component: str = "", *, interval: float = 1.0) -> AsyncIterator[Status]:
    """Yield the status of ``component`` and each change: ``callrt.Health.watch``'s stream.

    ``health`` is a stub (``client.stub(HealthAPI)``). A server older than streams is polled
    (``check`` every ``interval`` seconds) instead. The iteration ends when the server drains
    (after NOT_SERVING); a failing call (the server gone, a deadline) raises out of it: the
    caller decides whether to watch again.
    """
    try:
        async for status in health.watch(component):
            yield status
        return
    except (LocalProtocolError, UnknownMethod):  # a server before streams, or before watch
        pass
    last: Status | None = None
    while True:
        status = await health.check(component)
        if status != last:
            last = status
            yield status
        await anyio.sleep(interval)
