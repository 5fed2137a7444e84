"""Endpoints: where a server listens and a client connects (TCP, Unix socket, or in-memory for tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ("Endpoint", "memory", "parse_endpoint", "tcp", "unix")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A network address. ``str()`` gives the URL form that :func:`parse_endpoint` reads."""

    scheme: Literal["tcp", "unix", "memory"]
    address: str  # "host:port" for tcp, a filesystem path for unix, a name for memory

    @property
    def host(self) -> str:
        return _split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        return _split_host_port(self.address)[1]

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"


def tcp(address: str) -> Endpoint:
    """A TCP endpoint from ``"host:port"`` (``"[::1]:9000"`` for IPv6)."""
    _split_host_port(address)
    return Endpoint("tcp", address)


def unix(path: str) -> Endpoint:
    """A Unix-socket endpoint from a filesystem path."""
    if not path:
        raise ValueError("unix endpoint needs a path")
    return Endpoint("unix", path)


def memory(name: str) -> Endpoint:
    """An in-memory endpoint (``callrt.testing``'s transport): a server and its clients in one event loop."""
    if not name:
        raise ValueError("memory endpoint needs a name")
    return Endpoint("memory", name)


def parse_endpoint(value: str | Endpoint) -> Endpoint:
    """Parse ``"tcp://host:port"``, ``"unix:///path.sock"`` or ``"memory://name"``; an Endpoint is returned as is."""
    if isinstance(value, Endpoint):
        return value
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise ValueError(f"endpoint {value!r} needs a scheme: tcp://host:port or unix:///path")
    if scheme == "tcp":
        return tcp(rest)
    if scheme == "unix":
        return unix(rest)
    if scheme == "memory":
        return memory(rest)
    raise ValueError(f"unknown endpoint scheme {scheme!r} in {value!r}")


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"TCP address {address!r} must be host:port")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"TCP address {address!r}: port {int(port)} out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
