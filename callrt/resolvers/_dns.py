"""A resolver that finds replicas in DNS: the addresses of a name, or its SRV records.

DNS cannot notify, so the resolver looks the name up again every
``interval`` seconds and reports a new version only when the set of
addresses changes. SRV lookups use dnspython (``pip install 'callrt[dns]'``).
"""

from __future__ import annotations

import hashlib
import math
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Literal

import anyio

from ..endpoints import Endpoint, tcp
from ._base import Resolver, Version

if TYPE_CHECKING:
    import dns.asyncresolver

__all__ = ("DNSResolver", "Lookup")

Lookup = Callable[[], Awaitable[Iterable[tuple[str, int]]]]
"""An async function giving the current ``(host, port)`` pairs; it raises when the lookup fails."""


def _version_of(endpoints: Sequence[Endpoint]) -> Version:
    return hashlib.sha256("\0".join(sorted(map(str, endpoints))).encode()).hexdigest()[:16]


async def _getaddrinfo(host: str, port: int) -> list[tuple[str, int]]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(str(sockaddr[0]), int(sockaddr[1])) for *_, sockaddr in infos]


async def _srv(name: str, resolver: dns.asyncresolver.Resolver | None) -> list[tuple[str, int]]:
    import dns.asyncbackend
    import dns.asyncresolver

    # dnspython's default backend is whichever library it first ran under;
    # name the current one so asyncio and trio can both use it in one process.
    backend = dns.asyncbackend.get_backend(dns.asyncbackend.sniff())
    answer = await (resolver or dns.asyncresolver.get_default_resolver()).resolve(name, "SRV", backend=backend)
    pairs = []
    for record in answer:
        target = record.target.to_text(omit_final_dot=True)
        if target and target != ".":  # RFC 2782: target "." means no service here
            pairs.append((target, int(record.port)))
    return pairs


class DNSResolver(Resolver):
    """The TCP endpoints ``host`` resolves to on ``port``, looked up every ``interval`` seconds.

    ``resolve(version)`` keeps looking up until the set differs from
    ``version``, or returns ``version`` after about ``max_wait`` seconds to
    mean "ask again". Lookup errors are raised; the client retries them with
    backoff.

    :param lookup: replaces the ``getaddrinfo`` lookup, e.g. in tests.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        interval: float = 5.0,
        max_wait: float = 30.0,
        scheme: Literal["tcp"] = "tcp",
        lookup: Lookup | None = None,
    ) -> None:
        if scheme != "tcp":
            raise ValueError(f"DNSResolver gives tcp endpoints, not {scheme!r}")
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._name = f"{host}:{port}"
        self._lookup: Lookup = lookup or partial(_getaddrinfo, host, port)
        self._interval = interval
        self._rounds = max(1, math.ceil(max_wait / interval))
        self._last: Version | None = None

    @classmethod
    def srv(
        cls,
        name: str,
        *,
        interval: float = 5.0,
        max_wait: float = 30.0,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> DNSResolver:
        """The targets of the SRV records of ``name``, e.g. ``"_cart._tcp.example.com"``.

        Every target is a replica: priority and weight are not used. Targets
        are host names, resolved when the client connects.

        :param resolver: a configured ``dns.asyncresolver.Resolver``; the
            system's by default.
        """
        try:
            import dns.asyncresolver  # noqa: F401
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("DNSResolver.srv needs the dnspython package: pip install 'callrt[dns]'") from e
        self = cls(name, 0, interval=interval, max_wait=max_wait, lookup=partial(_srv, name, resolver))
        self._name = f"SRV {name}"
        return self

    def is_constant(self) -> bool:
        return False

    async def resolve(self, version: Version | None) -> tuple[Sequence[Endpoint], Version | None]:
        # When asked about the version returned last time, that lookup is
        # fresh: wait an interval before the next instead of repeating it.
        if version is None or version != self._last:
            endpoints, v = await self._lookup_now()
            if v != version:
                return endpoints, v
        for _ in range(self._rounds):
            await anyio.sleep(self._interval)
            endpoints, v = await self._lookup_now()
            if v != version:
                return endpoints, v
        return endpoints, version

    async def _lookup_now(self) -> tuple[list[Endpoint], Version]:
        found = {(host, port) for host, port in await self._lookup()}
        endpoints = sorted(
            (tcp(f"[{host}]:{port}" if ":" in host else f"{host}:{port}") for host, port in found), key=str
        )
        self._last = _version_of(endpoints)
        return endpoints, self._last

    def __repr__(self) -> str:
        return f"DNSResolver({self._name})"
