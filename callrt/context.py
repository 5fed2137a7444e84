"""Per-call values: the options a caller gives one call, and what a handler learns of the call it serves.

:class:`CallOptions` travels down from a stub to the balancer and into the
request; :class:`CallContext` (from :func:`current_call`) is the server's view
of the call a handler is running. Both sit below components, balancers and
connections, which all read them.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .protocol import Request

__all__ = (
    "CallContext",
    "CallOptions",
    "Peer",
    "StreamChannel",
    "SyncSlot",
    "current_call",
    "current_deadline",
    "serving_var",
    "stream_var",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOptions:
    """Per-call choices.

    :ivar retry: ``None`` follows the method (retriable unless ``@not_retriable``);
        ``False`` treats the call as not retriable (retried only if the request
        provably never left the client); ``True`` retries even a not-retriable method.
    :ivar shard_key: routes the call with shard-aware balancers and travels in the request.
    :ivar fail_fast: fail at once with Unreachable when no replica is available.
    :ivar compression: this call's codec (``"zstd"``, ``"lz4"``, ``"zlib"``) instead of the client's
        ``ClientOptions.compression``; ``"none"``: not compressed. Used only when the server offers it.
    """

    retry: bool | None = None
    shard_key: int | None = None
    metadata: Mapping[str, str] | None = None
    fail_fast: bool | None = None
    compression: str | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a server's connection, as the transport established it.

    :ivar address: ``"tcp://host:port"``, ``"unix://<path>"`` or ``"memory://<name>"``.
    :ivar local: the peer is on this machine (loopback TCP, a Unix socket, in memory).
    :ivar uid: for Unix sockets, the peer process's user id (``SO_PEERCRED``); likewise ``gid`` and ``pid``.
    :ivar uri_sans: with TLS, the URI names of the peer's verified certificate (SPIFFE IDs, say).
    :ivar dns_sans: with TLS, the DNS names of the peer's verified certificate.
    """

    address: str
    local: bool
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()


UNKNOWN_PEER = Peer("unknown", local=False)


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler can learn about the call it is serving (:func:`current_call`)."""

    method: str
    metadata: dict[str, str]
    caller: str
    deadline: float | None  # in anyio.current_time() terms, or None
    shard_key: int | None
    peer: Peer = UNKNOWN_PEER


# The serving path stores only what it already has; current_call() builds the
# CallContext on demand, so calls whose handlers never ask pay nothing for it.
Serving = tuple[Request, str, float | None, Peer]


class SyncSlot:
    """The call of the sync handler a connection's reading path is running, if any.

    A ContextVar's set and reset cost ~15% of serving a small sync call, so the
    reading path sets the variable to its connection's slot once per batch of
    frames, and each sync call only fills the slot. So does a plain async call
    until it first suspends; from then on, as for any async handler that
    interleaves with others, the variable is the call's own, in its task.
    """

    __slots__ = ("call",)

    def __init__(self) -> None:
        self.call: Serving | None = None


# The call being served in this context; ``None`` outside handlers (the client reads it on
# every call, to bound a nested call by its handler's deadline).
serving_var: contextvars.ContextVar[Serving | SyncSlot | None] = contextvars.ContextVar("callrt_call", default=None)


def _serving() -> Serving | None:
    current = serving_var.get()
    return current.call if type(current) is SyncSlot else current  # type: ignore[return-value]


def current_call() -> CallContext | None:
    """The call being served by the current handler, or ``None`` outside one."""
    current = _serving()
    if current is None:
        return None
    request, name, deadline, peer = current
    return CallContext(name, dict(request.metadata), request.caller, deadline, request.shard_key, peer)


def current_deadline() -> float | None:
    """The deadline of the call being served, if any (cheaper than :func:`current_call`)."""
    current = _serving()
    return None if current is None else current[2]


class StreamChannel(Protocol):
    """A stream call's two directions as the connection carries them: what a stream handler uses.

    :meth:`send` waits for the caller's credit, so a handler never gets ahead of its
    consumer by more than the window; :meth:`items` yields the caller's items as they come.
    """

    async def send(self, item: bytes) -> None:
        """Send one encoded item, once the caller's credit allows it."""

    def try_send(self, item: bytes) -> bool:
        """Send one encoded item now if the caller's credit allows it; False: :meth:`send` it instead."""
        ...

    def items(self) -> AsyncIterator[bytes]:
        """The caller's items, encoded, until it sends its last; granting credit as they are taken."""
        ...

    async def run_sync(self, fn: Callable[..., Any], *args: object) -> Any:
        """``fn(*args)`` in one of the server's handler threads (a plain generator's steps)."""


# The stream call being served in this context (set by the connection for a stream method's handler).
stream_var: contextvars.ContextVar[StreamChannel | None] = contextvars.ContextVar("callrt_stream", default=None)
