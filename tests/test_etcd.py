"""The etcd registry against a real etcd: registration, watches, leases, failures."""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from callrt import call, component, registry
from callrt.endpoints import Endpoint, tcp
from callrt.resolvers.etcd import EtcdError, EtcdRegistrar, EtcdResolver

from .etcd_server import EtcdServer, running_etcd

pytestmark = [pytest.mark.anyio, pytest.mark.etcd]

ROOT = Path(__file__).resolve().parent.parent
PROMPT = 1.0  # seconds within which a change must be visible
TTL = 2  # etcd's smallest lease


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run scripts/setup-etcd.sh", pytrace=False)
    with running_etcd() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"/callrt-test/{uuid.uuid4().hex}/"


async def etcd_post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        response = await client.post(path, json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


async def wait_until(
    resolver: EtcdResolver, done: Callable[[Sequence[Endpoint]], bool]
) -> tuple[Sequence[Endpoint], str]:
    """Follow the resolver's versions until ``done(endpoints)``."""
    endpoints, version = await resolver.resolve(None)
    while not done(endpoints):
        endpoints, version = await resolver.resolve(version)
    assert version is not None
    return endpoints, version


async def wait_for_watchers(url: str, count: int) -> None:
    """Poll etcd until it has ``count`` watches open: only etcd knows when a watch is in place."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while True:
            metrics = (await client.get("/metrics")).text
            [watchers] = [
                line for line in metrics.splitlines() if line.startswith("etcd_debugging_mvcc_watcher_total ")
            ]
            if int(float(watchers.split()[1])) == count:
                return
            await anyio.sleep(0.02)


@asynccontextmanager
async def resolver_for(etcd: EtcdServer, prefix: str, **kwargs: Any) -> AsyncIterator[EtcdResolver]:
    async with aclosing(EtcdResolver(etcd.url, prefix, **kwargs)) as resolver:
        yield resolver


async def test_registered_endpoint_is_resolved(etcd: EtcdServer, prefix: str) -> None:
    endpoint = tcp("127.0.0.1:9001")
    with anyio.fail_after(5):
        async with resolver_for(etcd, prefix) as resolver:
            assert (await resolver.resolve(None))[0] == ()
            start = anyio.current_time()
            async with EtcdRegistrar(etcd.url, prefix, ttl=TTL).registered(endpoint):
                endpoints, version = await resolver.resolve(None)
                elapsed = anyio.current_time() - start
                assert endpoints == (endpoint,)
                assert int(version) > 0
                assert elapsed < PROMPT, elapsed
                print(f"register to visible: {elapsed * 1000:.1f} ms")


async def test_blocked_resolve_wakes_on_registration(etcd: EtcdServer, prefix: str) -> None:
    endpoint = tcp("127.0.0.1:9002")
    with anyio.fail_after(10):
        async with resolver_for(etcd, prefix) as resolver:
            endpoints, version = await resolver.resolve(None)
            assert endpoints == ()
            woke: list[tuple[Sequence[Endpoint], str | None, float]] = []
            awake = anyio.Event()

            async def watch() -> None:
                endpoints, new = await resolver.resolve(version)
                woke.append((endpoints, new, anyio.current_time()))
                awake.set()

            await wait_for_watchers(etcd.url, 0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await wait_for_watchers(etcd.url, 1)  # blocked in its watch
                async with EtcdRegistrar(etcd.url, prefix, ttl=TTL).registered(endpoint):
                    registered = anyio.current_time()
                    await awake.wait()
            [(endpoints, new, at)] = woke
            assert endpoints == (endpoint,)
            assert new != version
            assert at - registered < PROMPT, at - registered
            print(f"registration to blocked resolver awake: {(at - registered) * 1000:.1f} ms")


async def test_deregistration_is_seen_at_once(etcd: EtcdServer, prefix: str) -> None:
    endpoint, other = tcp("127.0.0.1:9003"), tcp("127.0.0.1:9004")
    registrar = EtcdRegistrar(etcd.url, prefix, ttl=TTL)
    with anyio.fail_after(5):
        async with resolver_for(etcd, prefix) as resolver, registrar.registered(other):
            async with registrar.registered(endpoint):
                _, version = await wait_until(resolver, lambda e: e == (endpoint, other))
            left = anyio.current_time()
            endpoints, new = await resolver.resolve(version)
            assert endpoints == (other,)
            assert new != version
            elapsed = anyio.current_time() - left
            assert elapsed < PROMPT, elapsed


async def test_dead_server_expires_after_ttl(etcd: EtcdServer, prefix: str) -> None:
    endpoint = tcp("127.0.0.1:9005")
    child = (
        "import anyio, sys\n"
        "from callrt.endpoints import tcp\n"
        "from callrt.resolvers.etcd import EtcdRegistrar\n"
        "async def main():\n"
        f"    async with EtcdRegistrar({etcd.url!r}, {prefix!r}, ttl={TTL}).registered(tcp('127.0.0.1:9005')):\n"
        "        print('registered', flush=True)\n"
        "        await anyio.sleep_forever()\n"
        "anyio.run(main)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with anyio.fail_after(15):
        async with (
            resolver_for(etcd, prefix) as resolver,
            await anyio.open_process([sys.executable, "-c", child], env=env, stderr=None) as process,
        ):
            assert process.stdout is not None
            assert b"registered" in await process.stdout.receive()
            # Outlive a few keepalives so expiry can only come from the kill.
            _, version = await wait_until(resolver, lambda e: e == (endpoint,))
            await anyio.sleep(TTL)
            assert (await resolver.resolve(None))[0] == (endpoint,)
            process.send_signal(signal.SIGKILL)
            await process.wait()
            killed = anyio.current_time()
            await wait_until(resolver, lambda e: e == ())
            elapsed = anyio.current_time() - killed
            # The last renewal was at most TTL/3 before the kill; etcd checks expiry every 0.5 s.
            assert TTL * 2 / 3 - 0.1 < elapsed < TTL + 2.0, elapsed
            print(f"killed server gone after {elapsed:.2f} s (ttl {TTL} s)")


async def test_lost_lease_is_registered_again(etcd: EtcdServer, prefix: str) -> None:
    endpoint = tcp("127.0.0.1:9006")
    with anyio.fail_after(10):
        async with resolver_for(etcd, prefix) as resolver:
            async with EtcdRegistrar(etcd.url, prefix, ttl=TTL).registered(endpoint):
                key = (prefix + str(endpoint)).encode()
                [kv] = (await etcd_post(etcd.url, "/v3/kv/range", {"key": _b64(key)}))["kvs"]
                await etcd_post(etcd.url, "/v3/lease/revoke", {"ID": kv["lease"]})
                await wait_until(resolver, lambda e: e == ())
                await wait_until(resolver, lambda e: e == (endpoint,))
            await wait_until(resolver, lambda e: e == ())


async def test_keepalive_survives_etcd_outage(prefix: str, tmp_path: Path) -> None:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run scripts/setup-etcd.sh", pytrace=False)
    endpoint = tcp("127.0.0.1:9007")
    etcd = EtcdServer(tmp_path)
    etcd.start()
    try:
        with anyio.fail_after(20):
            async with EtcdRegistrar(etcd.url, prefix, ttl=TTL, timeout=0.5).registered(endpoint):
                await anyio.to_thread.run_sync(etcd.stop)
                await anyio.sleep(TTL)  # several failed renewals while etcd is down
                await anyio.to_thread.run_sync(etcd.start)
                async with resolver_for(etcd, prefix) as resolver:
                    await wait_until(resolver, lambda e: e == (endpoint,))
                    # Still registered a few renewals later: the registrar kept going.
                    await anyio.sleep(TTL + 0.5)
                    assert (await resolver.resolve(None))[0] == (endpoint,)
            async with resolver_for(etcd, prefix) as resolver:
                assert (await resolver.resolve(None))[0] == ()
    finally:
        etcd.stop()


@component(name="tests.etcd.Greeter")
class Greeter:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    def hello(self) -> str:
        self.calls += 1
        return self.name


async def test_clients_find_servers_through_etcd(etcd: EtcdServer, prefix: str) -> None:
    a, b = Greeter("a"), Greeter("b")
    options = call.ServerOptions(registrars=[EtcdRegistrar(etcd.url, prefix, ttl=TTL)])
    a_done = anyio.Event()

    async def serve_a(*, task_status: anyio.abc.TaskStatus[call.Server]) -> None:
        try:
            await call.serve("tcp://127.0.0.1:0", a, options=options, task_status=task_status)
        finally:
            a_done.set()

    with anyio.fail_after(10):
        async with (
            resolver_for(etcd, prefix) as resolver,
            resolver_for(etcd, prefix) as observer,
            anyio.create_task_group() as tg,
        ):
            started = anyio.current_time()
            server_a: call.Server = await tg.start(serve_a)
            async with call.connect(resolver) as conn:
                greeter = conn.stub(Greeter)
                assert await greeter.hello() == "a"
                elapsed = anyio.current_time() - started
                assert elapsed < PROMPT, elapsed
                print(f"server start to first call through etcd: {elapsed * 1000:.1f} ms")

                server_b: call.Server = await tg.start(partial(call.serve, "tcp://127.0.0.1:0", b, options=options))
                while await greeter.hello() != "b":
                    pass  # each call is a round trip; the client learns of b from its watch

                # Calls keep flowing while a drains; none may fail.
                async with anyio.create_task_group() as callers:

                    async def keep_calling() -> None:
                        while not a_done.is_set():
                            await greeter.hello()

                    callers.start_soon(keep_calling)
                    server_a.stop()
                    await a_done.wait()
                # a deregistered before it stopped serving, so before its drain ended.
                assert (await observer.resolve(None))[0] == (server_b.endpoint,)
                served_by_a = a.calls
                assert [await greeter.hello() for _ in range(20)] == ["b"] * 20
                assert a.calls == served_by_a
            server_b.stop()


async def test_resolve_returns_same_version_after_max_wait(etcd: EtcdServer, prefix: str) -> None:
    endpoint = tcp("127.0.0.1:9008")
    with anyio.fail_after(5):
        async with resolver_for(etcd, prefix, max_wait=0.3) as resolver:
            async with EtcdRegistrar(etcd.url, prefix, ttl=TTL).registered(endpoint):
                _, version = await wait_until(resolver, lambda e: e == (endpoint,))
                # Writes outside the prefix move etcd's revision but are not a change.
                await etcd_post(etcd.url, "/v3/kv/put", {"key": _b64(prefix[:-1].encode() + b"x"), "value": ""})
                start = anyio.current_time()
                assert await resolver.resolve(version) == ((endpoint,), version)
                assert 0.25 < anyio.current_time() - start < 2


async def test_compacted_version_reads_again(etcd: EtcdServer, prefix: str) -> None:
    endpoint = tcp("127.0.0.1:9009")
    with anyio.fail_after(5):
        async with resolver_for(etcd, prefix) as resolver:
            _, version = await resolver.resolve(None)
            async with EtcdRegistrar(etcd.url, prefix, ttl=TTL).registered(endpoint):
                head = (await etcd_post(etcd.url, "/v3/kv/range", {"key": _b64(b"-")}))["header"]["revision"]
                await etcd_post(etcd.url, "/v3/kv/compaction", {"revision": head})
                endpoints, new = await resolver.resolve(version)
                assert endpoints == (endpoint,)
                assert int(new) >= int(head)


async def test_version_from_the_future_reads_again(etcd: EtcdServer, prefix: str) -> None:
    # As after etcd was restored from a backup: its revisions went back.
    endpoint = tcp("127.0.0.1:9010")
    with anyio.fail_after(2):
        async with (
            resolver_for(etcd, prefix) as resolver,
            EtcdRegistrar(etcd.url, prefix, ttl=TTL).registered(endpoint),
        ):
            endpoints, version = await resolver.resolve(str(10**12))
            assert endpoints == (endpoint,)
            assert version is not None and int(version) < 10**12


@pytest.mark.parametrize("version", [None, "1"])
async def test_unreachable_etcd_raises_promptly(version: str | None) -> None:
    with socket_bound() as port:  # bound, never listening: connections are refused
        with anyio.fail_after(3):
            async with aclosing(EtcdResolver(f"http://127.0.0.1:{port}", "/x/", timeout=1)) as resolver:
                with pytest.raises(EtcdError, match="127.0.0.1"):
                    await resolver.resolve(version)
            with pytest.raises(EtcdError):
                async with EtcdRegistrar(f"http://127.0.0.1:{port}", "/x/", timeout=1).registered(tcp("1.2.3.4:5")):
                    pytest.fail("registered without etcd")


@pytest.mark.parametrize("version", [None, "1"])
async def test_silent_etcd_raises_within_timeout(version: str | None) -> None:
    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, anyio.create_task_group() as tg:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, hold)
        with anyio.fail_after(3):
            async with aclosing(EtcdResolver(f"http://127.0.0.1:{port}", "/x/", timeout=0.5)) as resolver:
                start = anyio.current_time()
                with pytest.raises(EtcdError):
                    await resolver.resolve(version)
                assert anyio.current_time() - start < 1.5
        tg.cancel_scope.cancel()


class socket_bound:
    """A loopback port that refuses connections for as long as it is held."""

    def __enter__(self) -> int:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- what a server on every interface registers ------------------------------------------------------


async def test_a_server_on_every_interface_registers_an_address_clients_reach(etcd: EtcdServer, prefix: str) -> None:
    """``tcp://0.0.0.0:PORT`` is no address to connect to: this machine's address is registered instead.

    A machine with no IPv4 address but loopback has none to register: there the server must refuse
    to start, as test_no_address_to_register_says_to_pass_advertise shows with the address patched away.
    """
    options = call.ServerOptions(insecure=True, registrars=[EtcdRegistrar(etcd.url, prefix, ttl=TTL)])
    if registry._machine_address(socket.AF_INET) is None:
        with anyio.fail_after(10), pytest.raises(ValueError, match="advertise="):
            async with call.start_server("tcp://0.0.0.0:0", Greeter("any"), options=options):
                pytest.fail("the server started with no address to register")
        return
    with anyio.fail_after(10):
        async with (
            call.start_server("tcp://0.0.0.0:0", Greeter("any"), options=options) as server,
            resolver_for(etcd, prefix) as resolver,
        ):
            (registered,) = (await resolver.resolve(None))[0]
            assert server.endpoint.host == "0.0.0.0"
            address = ipaddress.ip_address(registered.host)
            assert not (address.is_unspecified or address.is_loopback), registered
            assert registered.port == server.endpoint.port
            async with call.connect(resolver) as conn:
                assert await conn.stub(Greeter).hello() == "any"


async def test_advertise_is_what_is_registered(etcd: EtcdServer, prefix: str) -> None:
    registrar = EtcdRegistrar(etcd.url, prefix, ttl=TTL, advertise="127.0.0.1")
    options = call.ServerOptions(insecure=True, registrars=[registrar])
    with anyio.fail_after(10):
        async with (
            call.start_server("tcp://0.0.0.0:0", Greeter("advertised"), options=options) as server,
            resolver_for(etcd, prefix) as resolver,
        ):
            assert (await resolver.resolve(None))[0] == (tcp(f"127.0.0.1:{server.endpoint.port}"),)
            async with call.connect(resolver) as conn:
                assert await conn.stub(Greeter).hello() == "advertised"
        async with registrar.registered(tcp("[::]:9010")):  # an IPv6 listener, an IPv4 advertised host
            assert (await resolver_endpoints(etcd, prefix)) == (tcp("127.0.0.1:9010"),)
    assert "advertise='127.0.0.1'" in repr(registrar)


async def resolver_endpoints(etcd: EtcdServer, prefix: str) -> Sequence[Endpoint]:
    async with resolver_for(etcd, prefix) as resolver:
        return (await resolver.resolve(None))[0]


@pytest.mark.parametrize(
    ("advertise", "problem"),
    [
        ("10.0.0.5:9000", "without a port"),
        ("tcp://10.0.0.5", "host name or IP address"),
        ("", "host name or IP address"),
        ("0.0.0.0", "unspecified"),
        ("[::]", "unspecified"),
    ],
)
async def test_advertise_must_be_a_host(advertise: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        EtcdRegistrar("http://127.0.0.1:2379", "/x/", advertise=advertise)
    assert repr(EtcdRegistrar("http://127.0.0.1:2379", "/x/", advertise="[fd00::5]")).endswith("advertise='fd00::5')")


async def test_no_address_to_register_says_to_pass_advertise(
    etcd: EtcdServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine whose address cannot be told (its host name is loopback, no default route): the server
    does not register an address nobody can reach; it fails to start, saying what to pass."""
    monkeypatch.setattr(registry, "_machine_address", lambda family: None)
    options = call.ServerOptions(insecure=True, registrars=[EtcdRegistrar(etcd.url, prefix, ttl=TTL)])
    with anyio.fail_after(10):
        with pytest.raises(ValueError, match=r"tcp://0\.0\.0\.0:\d+ listens on every interface.*advertise="):
            async with call.start_server("tcp://0.0.0.0:0", Greeter("nowhere"), options=options):
                pytest.fail("the server started")
        assert (await resolver_endpoints(etcd, prefix)) == ()
