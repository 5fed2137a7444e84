"""A component that tells its caller who it is, as the server saw it (for the TLS and access tests, and their worker processes)."""

from __future__ import annotations

import msgspec

from callrt import call, component


class PeerInfo(msgspec.Struct):
    address: str
    local: bool
    uid: int | None
    uri_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]


def _peer() -> PeerInfo:
    current = call.current_call()
    assert current is not None
    p = current.peer
    return PeerInfo(p.address, p.local, p.uid, p.uri_sans, p.dns_sans)


@component(name="tests.Whoami")
class Whoami:
    calls = 0  # handler runs, over all instances (the access tests check refused calls never ran)

    async def peer(self) -> PeerInfo:
        Whoami.calls += 1
        return _peer()

    def peer_sync(self) -> PeerInfo:
        Whoami.calls += 1
        return _peer()

    async def secret(self) -> str:
        Whoami.calls += 1
        return "s3cret"

    def echo(self, data: bytes) -> bytes:
        return data
