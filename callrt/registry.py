"""Registrars: how a server announces itself to a discovery system while it serves."""

from __future__ import annotations

import ipaddress
import socket
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager, closing

import anyio

from .endpoints import Endpoint, tcp

__all__ = ("Registrar", "advertised", "check_advertise")


class Registrar(ABC):
    """Keeps a serving endpoint registered.

    ``call.serve`` enters :meth:`registered` once its listeners are bound and
    exits it first when it drains, before the goaway, so that clients stop
    picking the server before it stops taking calls.
    """

    @abstractmethod
    def registered(self, endpoint: Endpoint) -> AbstractAsyncContextManager[None]:
        """Register ``endpoint`` on enter, keep the registration alive, remove it on exit."""


def check_advertise(advertise: str | None) -> str | None:
    """``advertise`` as a bare host (a name or an IP address, IPv6 without brackets); a ValueError if it is not one."""
    if advertise is None:
        return None
    host = advertise[1:-1] if advertise.startswith("[") and advertise.endswith("]") else advertise
    if not host or "/" in host or any(c.isspace() for c in host):
        raise ValueError(f"advertise={advertise!r}: give the host name or IP address clients reach this server at")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"advertise={advertise!r}: give a host, without a port (the port is the listener's)"
            ) from None
    if _unspecified(host):
        raise ValueError(f"advertise={advertise!r}: an unspecified address is no place a client can connect to")
    return host


async def advertised(endpoint: Endpoint, advertise: str | None = None) -> Endpoint:
    """What to announce for a server bound to ``endpoint``: an address that clients can connect to.

    ``advertise`` (a host, see :func:`check_advertise`) replaces the host of a TCP endpoint.
    Without it, an endpoint bound to every interface (``0.0.0.0``, ``::``) is announced at
    this machine's address: its host name's, or else the address of the interface its
    default route leaves by; with neither, a ValueError that says to pass ``advertise``.
    Other endpoints are announced as they are.
    """
    if endpoint.scheme != "tcp":
        return endpoint
    host, port = endpoint.host, endpoint.port
    if advertise is None:
        if not _unspecified(host):
            return endpoint
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        found = await anyio.to_thread.run_sync(_machine_address, family)
        if found is None:
            raise ValueError(
                f"{endpoint} listens on every interface, and this machine's address for clients cannot be told"
                f" (its host name {socket.gethostname()!r} resolves to no address that is not loopback, and"
                " there is no default route): pass the address clients should use, EtcdRegistrar(...,"
                " advertise='10.0.0.5'), or listen on that address"
            )
        advertise = found
    return tcp(f"[{advertise}]:{port}" if ":" in advertise else f"{advertise}:{port}")


def _unspecified(host: str) -> bool:
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a name


def _machine_address(family: socket.AddressFamily) -> str | None:
    """This machine's address in ``family`` that other machines can reach, or None if none can be told."""
    return _host_name_address(family) or _route_address(family)


def _host_name_address(family: socket.AddressFamily) -> str | None:
    """The first address of this machine's host name that is not loopback (``/etc/hosts`` often says 127.0.1.1)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)
    except OSError:
        return None
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if not (address.is_loopback or address.is_unspecified or address.is_link_local):
            return str(address)
    return None


def _route_address(family: socket.AddressFamily) -> str | None:
    """The address of the interface that the default route leaves by (a UDP connect sends nothing)."""
    probe = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"  # documentation addresses
    try:
        with closing(socket.socket(family, socket.SOCK_DGRAM)) as sock:
            sock.connect((probe, 9))
            address = ipaddress.ip_address(str(sock.getsockname()[0]).partition("%")[0])
    except OSError:
        return None
    return None if address.is_loopback or address.is_unspecified else str(address)
