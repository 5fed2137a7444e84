"""Access policies (``ServerOptions.access``): checked before a handler runs, refusals are PermissionDenied and logged."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from callrt import call, component, errors
from callrt.access import AllowList, identities
from callrt.connection.server import Server, ServerConnection
from callrt.context import Peer
from callrt.handlers import HandlerMap
from tests.support import short_tempdir
from tests.tls_certs import Certs, Leaf, make_certs
from tests.tls_components import Whoami

pytestmark = pytest.mark.anyio

SHELLS = ["auto", "stream"]
CLIENT = "spiffe://test/client"
OTHER = "spiffe://test/other"


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    for directory in short_tempdir():
        yield make_certs(directory)


def tls_server(certs: Certs, shell: str, access: Any) -> call.ServerOptions:
    return call.ServerOptions(tls=certs.server_context(), transport=shell, access=access)


def tls_client(certs: Certs, shell: str, leaf: Leaf) -> call.ClientOptions:
    return call.ClientOptions(tls=certs.client_context(leaf), transport=shell)


# -- the policy on its own ---------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # plain functions: one backend is enough
async def test_allow_list_rules() -> None:
    policy = AllowList(
        {
            "shop.Cart": [CLIENT, OTHER, "uid:0"],
            "shop.Cart.checkout": [CLIENT],
            "shop.Health": ["*"],
            "*": ["admin.test"],
        }
    )
    client = Peer("tcp://10.0.0.1:5000", False, uri_sans=(CLIENT,), dns_sans=("client.test",))
    other = Peer("tcp://10.0.0.2:5000", False, uri_sans=(OTHER,))
    admin = Peer("tcp://10.0.0.3:5000", False, dns_sans=("admin.test",))
    root = Peer("unix:///run/x.sock", True, uid=0, gid=0, pid=1)
    nobody = Peer("tcp://10.0.0.4:5000", False)
    assert policy(client, "shop.Cart", "add") and policy(other, "shop.Cart", "add") and policy(root, "shop.Cart", "add")
    assert policy(client, "shop.Cart", "checkout")
    assert not policy(other, "shop.Cart", "checkout")  # the method's rule replaces the component's
    assert not policy(admin, "shop.Cart", "add")  # "*" covers only what no other key does
    assert policy(admin, "shop.Orders", "list") and not policy(client, "shop.Orders", "list")
    assert policy(nobody, "shop.Health", "check")  # identity "*": anyone
    assert not AllowList({})(client, "shop.Cart", "add")  # nothing listed: refused
    assert identities(root) == ("uid:0", "gid:0")
    assert identities(client) == (CLIENT, "client.test")
    with pytest.raises(TypeError):
        AllowList({"shop.Cart": CLIENT})  # a string is not a list of identities


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_without_a_policy_the_lookup_is_the_handler_tables_own() -> None:
    """No policy, no cost: a connection looks handlers up with the table's dict.get itself."""
    handlers = HandlerMap()
    handlers.add_handlers(None, Whoami())
    io: Any = type("IO", (), {"write": None, "run_async": None, "cancel_running": None, "close": None})()
    plain = ServerConnection(Server(handlers, call.ServerOptions()), io)
    assert plain.find_handler is handlers.get
    guarded = ServerConnection(Server(handlers, call.ServerOptions(access=AllowList({}))), io)
    assert guarded.find_handler is not handlers.get


# -- over the wire -------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
async def test_an_allow_list_lets_listed_identities_through_and_refuses_others(
    shell: str, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="callrt.server")
    policy = AllowList({"tests.Whoami": [CLIENT, "other.test"], "tests.Whoami.secret": [CLIENT]})
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=tls_server(certs, shell, policy)) as server:
            async with call.connect(str(server.endpoint), options=tls_client(certs, shell, certs.client)) as client:
                stub = client.stub(Whoami)
                assert (await stub.peer()).uri_sans == (CLIENT,)
                assert (await stub.peer_sync()).uri_sans == (CLIENT,)
                assert await stub.secret() == "s3cret"
            async with call.connect(str(server.endpoint), options=tls_client(certs, shell, certs.other)) as client:
                stub = client.stub(Whoami)
                info = await stub.peer()  # allowed by its DNS name
                before = Whoami.calls
                for _ in range(2):  # decided once per connection, refused every time
                    with pytest.raises(errors.PermissionDenied) as refused:
                        await stub.secret()
                assert Whoami.calls == before  # the handler never ran
                assert refused.value.code is errors.ErrorCode.PERMISSION_DENIED
                assert "tests.Whoami.secret" in refused.value.message
                await stub.peer()  # the connection is fine
    refusals = [r for r in caplog.records if r.name == "callrt.server" and r.levelno == logging.WARNING]
    assert len(refusals) == 2
    text = refusals[0].getMessage()
    assert "tests.Whoami.secret" in text and info.address in text and OTHER in text


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_plaintext_peer_has_no_identity_to_allow(shell: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="callrt.server")
    options = call.ServerOptions(transport=shell, access=AllowList({"tests.Whoami": [CLIENT]}))  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            async with call.connect(str(server.endpoint)) as client:
                with pytest.raises(errors.PermissionDenied):
                    await client.stub(Whoami).peer_sync()
                with pytest.raises(errors.RemoteError) as refused:  # caught by its base class too
                    await client.stub(Whoami).peer()
                assert isinstance(refused.value, errors.PermissionDenied)
    assert any("identities: none" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_callable_policy_on_unix_socket_credentials(shell: str, sockdir: Path) -> None:
    seen: list[tuple[Peer, str, str]] = []

    def same_user(peer: Peer, component: str, method: str) -> bool:
        seen.append((peer, component, method))
        return peer.uid == os.getuid() and method != "secret"

    options = call.ServerOptions(transport=shell, access=same_user)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.start_server(f"unix://{sockdir}/uid.sock", Whoami(), options=options) as server:
            async with call.connect(str(server.endpoint)) as client:
                stub = client.stub(Whoami)
                assert (await stub.peer()).uid == os.getuid()
                await stub.peer()
                with pytest.raises(errors.PermissionDenied):
                    await stub.secret()
    assert [(c, m) for _, c, m in seen] == [("tests.Whoami", "peer"), ("tests.Whoami", "secret")]  # once per method
    assert seen[0][0].uid == os.getuid() and seen[0][0].pid == os.getpid()

    def other_user(peer: Peer, component: str, method: str) -> bool:
        return peer.uid is not None and peer.uid != os.getuid()

    options = call.ServerOptions(transport=shell, access=other_user)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.start_server(f"unix://{sockdir}/uid2.sock", Whoami(), options=options) as server:
            async with call.connect(str(server.endpoint)) as client:
                with pytest.raises(errors.PermissionDenied):
                    await client.stub(Whoami).peer()


async def test_a_policy_that_raises_refuses(caplog: pytest.LogCaptureFixture) -> None:
    def broken(peer: Peer, component: str, method: str) -> bool:
        raise RuntimeError("policy bug")

    with anyio.fail_after(10):
        async with call.start_server(
            "memory://broken-policy", Whoami(), options=call.ServerOptions(access=broken)
        ) as server:
            async with call.connect(str(server.endpoint)) as client:
                with pytest.raises(errors.PermissionDenied):
                    await client.stub(Whoami).peer()
    assert any(r.levelno == logging.ERROR and "policy" in r.getMessage() for r in caplog.records)


@component(name="tests.Whoami")
class WhoamiNewer:
    """A client's newer idea of the component: a method the server does not have."""

    async def added_later(self) -> int: ...


async def test_unknown_methods_are_still_unknown_under_a_policy() -> None:
    with anyio.fail_after(10):
        options = call.ServerOptions(access=AllowList({"*": ["*"]}))
        async with call.start_server("memory://unknown-policy", Whoami(), options=options) as server:
            async with call.connect(str(server.endpoint)) as client:
                assert (await client.stub(Whoami).peer()).address == "memory://unknown-policy"
                with pytest.raises(errors.UnknownMethod):
                    await client.stub(WhoamiNewer).added_later()
