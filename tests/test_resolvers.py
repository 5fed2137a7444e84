"""Resolvers: the Unix-socket directory (real sockets, real inotify) and DNS (injected, getaddrinfo, SRV)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import dns.asyncresolver
import dns.message
import dns.rcode
import dns.resolver
import dns.rrset
import pytest

from callrt.endpoints import Endpoint, tcp, unix
from callrt.resolvers import DNSResolver, Resolver, UnixDirectoryResolver, Version

pytestmark = pytest.mark.anyio

Result = tuple[Sequence[Endpoint], Version | None]


async def resolve_while(resolver: Resolver, version: Version, change: Callable[[], object]) -> Result:
    """``resolver.resolve(version)``, with ``change()`` made once it is waiting."""
    result: list[Result] = []

    async def run() -> None:
        result.append(await resolver.resolve(version))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        # Every task blocked: the resolver has listed and its watch is in place.
        await anyio.wait_all_tasks_blocked()
        assert not result, "resolve() returned before anything changed"
        change()
    return result[0]


async def stays_blocked(resolver: Resolver, version: Version, seconds: float = 0.3) -> bool:
    with anyio.fail_after(seconds + 1.5):  # leaving the wait must be prompt too
        with anyio.move_on_after(seconds):
            await resolver.resolve(version)
            return False
    return True


# --- UnixDirectoryResolver ------------------------------------------------------


@pytest.fixture
def bind() -> Iterator[Callable[[Path], socket.socket]]:
    opened: list[socket.socket] = []

    def bind(path: Path) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        opened.append(s)
        return s

    yield bind
    for s in opened:
        s.close()


async def test_unixdir_lists_matching_sockets_only(sockdir: Path, bind: Callable[[Path], socket.socket]) -> None:
    bind(sockdir / "b.sock")
    bind(sockdir / "a.sock")
    bind(sockdir / "other.socket")  # a socket, but not matching the pattern
    (sockdir / "file.sock").write_text("not a socket")
    (sockdir / "dir.sock").mkdir()
    (sockdir / "link.sock").symlink_to(sockdir / "gone.sock")  # dangling
    r = UnixDirectoryResolver(sockdir)
    assert not r.is_constant()
    with anyio.fail_after(2):
        endpoints, version = await r.resolve(None)
        assert endpoints == [unix(str(sockdir / "a.sock")), unix(str(sockdir / "b.sock"))]
        assert version is not None
        # The version depends on the set only: another resolver, another pattern
        # reaching the same sockets, agree.
        assert (await UnixDirectoryResolver(sockdir, "?.sock").resolve(None))[1] == version
        assert (await UnixDirectoryResolver(sockdir, "*").resolve(None))[1] != version


async def test_unixdir_relative_path(
    sockdir: Path, bind: Callable[[Path], socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    bind(sockdir / "a.sock")
    monkeypatch.chdir(sockdir.parent)
    r = UnixDirectoryResolver(sockdir.name)
    monkeypatch.chdir("/")
    with anyio.fail_after(2):
        assert (await r.resolve(None))[0] == [unix(str(sockdir / "a.sock"))]


async def test_unixdir_sees_sockets_come_and_go(sockdir: Path, bind: Callable[[Path], socket.socket]) -> None:
    r = UnixDirectoryResolver(sockdir)
    with anyio.fail_after(2):
        endpoints, v0 = await r.resolve(None)
        assert endpoints == []
        assert v0 is not None

    with anyio.fail_after(2):
        endpoints, v1 = await resolve_while(r, v0, lambda: bind(sockdir / "a.sock"))
    assert endpoints == [unix(str(sockdir / "a.sock"))]
    assert v1 is not None and v1 != v0

    with anyio.fail_after(2):
        endpoints, v2 = await resolve_while(r, v1, lambda: bind(sockdir / "b.sock"))
    assert endpoints == [unix(str(sockdir / "a.sock")), unix(str(sockdir / "b.sock"))]
    assert v2 is not None and v2 not in (v0, v1)

    with anyio.fail_after(2):
        endpoints, v3 = await resolve_while(r, v2, lambda: os.unlink(sockdir / "a.sock"))
    assert endpoints == [unix(str(sockdir / "b.sock"))]
    assert v3 is not None and v3 not in (v0, v1, v2)


async def test_unixdir_blocks_while_nothing_relevant_changes(
    sockdir: Path, bind: Callable[[Path], socket.socket]
) -> None:
    bind(sockdir / "a.sock")
    r = UnixDirectoryResolver(sockdir)
    with anyio.fail_after(2):
        _, v = await r.resolve(None)
    assert v is not None
    assert await stays_blocked(r, v)

    # Changes that leave the set as it was do not wake it.
    async def churn() -> None:
        await anyio.wait_all_tasks_blocked()
        (sockdir / "notes.txt").write_text("x")
        (sockdir / "plain.sock").write_text("a file, not a socket")
        bind(sockdir / "a.socket")
        (sockdir / "sub").mkdir()
        bind(sockdir / "sub" / "deep.sock")  # not in the directory itself

    async with anyio.create_task_group() as tg:
        tg.start_soon(churn)
        assert await stays_blocked(r, v, 0.5)


async def test_unixdir_returns_at_once_for_a_stale_version(
    sockdir: Path, bind: Callable[[Path], socket.socket]
) -> None:
    r = UnixDirectoryResolver(sockdir)
    with anyio.fail_after(2):
        _, v0 = await r.resolve(None)
        bind(sockdir / "a.sock")
        endpoints, v1 = await r.resolve(v0)
        assert endpoints == [unix(str(sockdir / "a.sock"))]
        assert v1 != v0
        assert (await r.resolve("not-a-version"))[1] == v1


async def test_unixdir_asks_again_after_max_wait(sockdir: Path) -> None:
    r = UnixDirectoryResolver(sockdir, max_wait=0.2)
    with anyio.fail_after(2):
        _, v = await r.resolve(None)
        assert v is not None
        assert await r.resolve(v) == ([], v)


async def test_unixdir_missing_directory_appears_later(
    sockdir: Path, bind: Callable[[Path], socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = sockdir / "x" / "y"
    r = UnixDirectoryResolver(target)
    # Report each directory the resolver starts watching, so the test can make
    # its next change once the watch is in place.
    send, watched = anyio.create_memory_object_stream[str](100)
    awatch = r._awatch

    def spy(root: str, **kwargs: Any) -> Any:
        send.send_nowait(root)
        return awatch(root, **kwargs)

    monkeypatch.setattr(r, "_awatch", spy)

    async def resolve_during(version: Version, *steps: tuple[Path, Callable[[], object]]) -> Result:
        """resolve(version), making each change once the watch is on its directory."""

        async def changes() -> None:
            for root, change in steps:
                assert await watched.receive() == str(root)
                change()

        async with anyio.create_task_group() as tg:
            tg.start_soon(changes)
            return await r.resolve(version)

    with send, watched, anyio.fail_after(5):
        endpoints, v0 = await r.resolve(None)
        assert endpoints == []
        assert v0 is not None

        # Missing: its nearest ancestor is watched, then each level as it appears.
        endpoints, v1 = await resolve_during(
            v0,
            (sockdir, lambda: (sockdir / "x").mkdir()),
            (sockdir / "x", target.mkdir),
            (target, lambda: bind(target / "a.sock")),
        )
        assert endpoints == [unix(str(target / "a.sock"))]
        assert v1 is not None

        # Removed with its sockets: an empty set again.
        assert await resolve_during(v1, (target, lambda: shutil.rmtree(target))) == ([], v0)

        # Removed while empty, and made again.
        target.mkdir()
        endpoints, v2 = await resolve_during(
            v0,
            (target, lambda: shutil.rmtree(target)),
            (sockdir / "x", target.mkdir),
            (target, lambda: bind(target / "b.sock")),
        )
        assert endpoints == [unix(str(target / "b.sock"))]
        assert v2 not in (v0, v1)


async def test_unixdir_change_between_calls_is_not_lost(sockdir: Path, bind: Callable[[Path], socket.socket]) -> None:
    # The watch only runs inside resolve(); a change made while nobody waits
    # is still reported by the next call.
    r = UnixDirectoryResolver(sockdir)
    with anyio.fail_after(2):
        _, v0 = await r.resolve(None)
        assert v0 is not None
        _, v1 = await resolve_while(r, v0, lambda: bind(sockdir / "a.sock"))
        assert v1 is not None
        bind(sockdir / "b.sock")
        endpoints, v2 = await r.resolve(v1)
    assert len(endpoints) == 2 and v2 not in (v0, v1)


# --- DNSResolver ----------------------------------------------------------------


class FakeLookup:
    """Answers with ``answer`` (raises it if it is an exception) and counts calls."""

    def __init__(self, answer: list[tuple[str, int]] | Exception) -> None:
        self.answer = answer
        self.calls = 0
        self.on_call: Callable[[int], None] = lambda n: None

    async def __call__(self) -> list[tuple[str, int]]:
        self.calls += 1
        self.on_call(self.calls)
        await anyio.lowlevel.checkpoint()
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


async def test_dns_endpoints_are_sorted_deduplicated_and_bracketed() -> None:
    lookup = FakeLookup([("10.0.0.2", 80), ("::1", 80), ("10.0.0.1", 80), ("10.0.0.2", 80)])
    r = DNSResolver("svc", 80, lookup=lookup)
    assert not r.is_constant()
    with anyio.fail_after(2):
        endpoints, v = await r.resolve(None)
        assert endpoints == [tcp("10.0.0.1:80"), tcp("10.0.0.2:80"), tcp("[::1]:80")]
        assert endpoints[2].host == "::1"
        lookup.answer = [("::1", 80), ("10.0.0.2", 80), ("10.0.0.1", 80)]
        assert (await r.resolve(None))[1] == v


async def test_dns_returns_when_the_set_changes() -> None:
    lookup = FakeLookup([("10.0.0.1", 80)])
    r = DNSResolver("svc", 80, interval=0.01, lookup=lookup)

    def change_on_fourth(n: int) -> None:
        if n == 4:
            lookup.answer = [("10.0.0.1", 80), ("10.0.0.2", 80)]

    with anyio.fail_after(2):
        _, v0 = await r.resolve(None)
        assert v0 is not None
        lookup.on_call = change_on_fourth
        endpoints, v1 = await r.resolve(v0)
    assert endpoints == [tcp("10.0.0.1:80"), tcp("10.0.0.2:80")]
    assert v1 != v0
    # Asked about the version it just returned, it waits an interval first.
    assert lookup.calls == 4


async def test_dns_asks_again_after_max_wait() -> None:
    lookup = FakeLookup([("10.0.0.1", 80)])
    r = DNSResolver("svc", 80, interval=0.01, max_wait=0.05, lookup=lookup)
    with anyio.fail_after(2):
        endpoints, v = await r.resolve(None)
        assert v is not None
        assert await r.resolve(v) == (endpoints, v)
    assert lookup.calls == 1 + 5


async def test_dns_stale_version_is_looked_up_at_once() -> None:
    lookup = FakeLookup([("10.0.0.1", 80)])
    r = DNSResolver("svc", 80, interval=60, lookup=lookup)
    with anyio.fail_after(2):
        endpoints, v = await r.resolve("old")
    assert endpoints == [tcp("10.0.0.1:80")] and v != "old"
    assert lookup.calls == 1


async def test_dns_lookup_errors_raise() -> None:
    lookup = FakeLookup(OSError("no such host"))
    r = DNSResolver("svc", 80, interval=0.01, lookup=lookup)
    with anyio.fail_after(2):
        with pytest.raises(OSError, match="no such host"):
            await r.resolve(None)
        lookup.answer = [("10.0.0.1", 80)]
        _, v = await r.resolve(None)
        assert v is not None
        lookup.answer = OSError("server failure")
        with pytest.raises(OSError, match="server failure"):
            await r.resolve(v)


def test_dns_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        DNSResolver("svc", 80, scheme="unix")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DNSResolver("svc", 80, interval=0)


async def test_dns_real_getaddrinfo_localhost() -> None:
    r = DNSResolver("localhost", 9000)
    with anyio.fail_after(5):
        endpoints, v = await r.resolve(None)
    assert v is not None
    assert endpoints
    assert {e.port for e in endpoints} == {9000}
    assert {e.host for e in endpoints} <= {"127.0.0.1", "::1"}
    assert len(set(endpoints)) == len(endpoints)


async def test_dns_real_getaddrinfo_unknown_host_raises() -> None:
    r = DNSResolver("no-such-host.invalid", 9000)
    with anyio.fail_after(5):
        with pytest.raises(OSError):
            await r.resolve(None)


class FakeDNSServer:
    """A UDP DNS server on 127.0.0.1 that answers SRV queries for one name."""

    def __init__(self, name: str, records: list[str]) -> None:
        self.name = name
        self.records = records
        self.port = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with await anyio.create_udp_socket(local_host="127.0.0.1") as udp:
            self.port = udp.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started()
            async for data, (host, port) in udp:
                query = dns.message.from_wire(data)
                reply = dns.message.make_response(query)
                if query.question[0].name.to_text() == self.name and self.records:
                    reply.answer.append(dns.rrset.from_text(self.name, 30, "IN", "SRV", *self.records))
                else:
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                await udp.sendto(reply.to_wire(), host, port)

    def resolver(self) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 2.0
        return resolver


async def with_dns_server(server: FakeDNSServer, body: Callable[[], Awaitable[None]]) -> None:
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            await body()
            tg.cancel_scope.cancel()


async def test_dns_srv_records() -> None:
    name = "_cart._tcp.example.com."
    server = FakeDNSServer(name, ["10 5 9000 a.example.com.", "20 1 9001 b.example.com.", "0 0 0 ."])

    async def body() -> None:
        r = DNSResolver.srv(name, interval=0.01, resolver=server.resolver())
        assert "SRV" in repr(r)
        endpoints, v0 = await r.resolve(None)
        assert endpoints == [tcp("a.example.com:9000"), tcp("b.example.com:9001")]
        assert v0 is not None

        server.records = ["10 5 9000 a.example.com."]
        endpoints, v1 = await r.resolve(v0)
        assert endpoints == [tcp("a.example.com:9000")]
        assert v1 != v0

        missing = DNSResolver.srv("_nope._tcp.example.com.", resolver=server.resolver())
        with pytest.raises(dns.resolver.NXDOMAIN):
            await missing.resolve(None)

    await with_dns_server(server, body)
