"""``current_call().peer``: who called, as the transport established it (address, Unix credentials)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import msgspec
import pytest

from callrt import call, component

pytestmark = pytest.mark.anyio


class PeerInfo(msgspec.Struct):
    address: str
    local: bool
    uid: int | None
    gid: int | None
    pid: int | None


@component(name="tests.WhoAmI")
class WhoAmI:
    async def peer(self) -> PeerInfo:
        return self._info()

    def peer_sync(self) -> PeerInfo:
        return self._info()

    def _info(self) -> PeerInfo:
        current = call.current_call()
        assert current is not None
        p = current.peer
        return PeerInfo(p.address, p.local, p.uid, p.gid, p.pid)


@pytest.mark.parametrize("transport", ["auto", "stream"])
@pytest.mark.parametrize("scheme", ["tcp", "unix", "memory"])
async def test_the_handler_sees_its_peer(scheme: str, transport: str, sockdir: Path) -> None:
    address = {"tcp": "tcp://127.0.0.1:0", "unix": f"unix://{sockdir}/who.sock", "memory": "memory://who"}[scheme]
    options = call.ServerOptions(transport=transport)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.start_server(address, WhoAmI(), options=options) as server:
            async with call.connect(str(server.endpoint)) as client:
                stub = client.stub(WhoAmI)
                for info in (await stub.peer(), await stub.peer_sync()):
                    assert info.local
                    if scheme == "tcp":
                        assert info.address.startswith("tcp://127.0.0.1:")
                        assert info.address != str(server.endpoint)  # the client's port, not ours
                        assert (info.uid, info.pid) == (None, None)
                    elif scheme == "unix":
                        assert info.address == str(server.endpoint)
                        assert (info.uid, info.gid, info.pid) == (os.getuid(), os.getgid(), os.getpid())
                    else:
                        assert info.address == "memory://who"
