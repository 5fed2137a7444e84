"""TLS and mutual TLS on both shells (asyncio Protocol, anyio streams), over TCP and Unix sockets, and the plaintext guard.

Certificates are made by trustme for each module run (``tests/tls_certs.py``); none is committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from callrt import call, errors
from callrt.endpoints import Endpoint, parse_endpoint
from callrt.testing import WorkerProcess
from callrt.transport import TransportSelector
from tests.support import short_tempdir
from tests.tls_certs import Certs, Leaf, make_certs
from tests.tls_components import Whoami

pytestmark = pytest.mark.anyio

SHELLS = ["auto", "stream"]  # "auto" is the asyncio Protocol shell on asyncio (and streams on trio)


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    for directory in short_tempdir():
        yield make_certs(directory)


def _address(scheme: str, sockdir: Path) -> str:
    return "tcp://127.0.0.1:0" if scheme == "tcp" else f"unix://{sockdir}/tls.sock"


def server_options(certs: Certs, shell: str, *, mutual: bool = True, **more: Any) -> call.ServerOptions:
    return call.ServerOptions(tls=certs.server_context(mutual=mutual), transport=shell, **more)


def client_options(certs: Certs, shell: str, leaf: Leaf | None = None, **more: Any) -> call.ClientOptions:
    return call.ClientOptions(tls=certs.client_context(leaf), transport=shell, **more)


async def connect_error(endpoint: Endpoint, options: call.ClientOptions) -> errors.CommunicationError:
    """The error one connection attempt (TLS and callrt handshakes) fails with."""
    with pytest.raises(errors.CommunicationError) as caught:
        async with TransportSelector(options.transport).for_endpoint(endpoint).connect(endpoint, options):
            pass
    return caught.value


# -- calls over TLS ---------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("scheme", ["tcp", "unix"])
async def test_calls_over_tls(scheme: str, shell: str, certs: Certs, sockdir: Path) -> None:
    with anyio.fail_after(10):
        options = server_options(certs, shell, mutual=False)
        async with call.start_server(_address(scheme, sockdir), Whoami(), options=options) as server:
            async with call.connect(str(server.endpoint), options=client_options(certs, shell)) as client:
                stub = client.stub(Whoami)
                for info in (await stub.peer(), await stub.peer_sync()):
                    assert info.local
                    assert (info.uri_sans, info.dns_sans) == ((), ())  # no client certificate: no identity
                    if scheme == "unix":
                        assert info.uid == os.getuid()


@pytest.mark.parametrize(
    ("server_shell", "client_shell"), [("auto", "auto"), ("stream", "stream"), ("auto", "stream"), ("stream", "auto")]
)
@pytest.mark.parametrize("scheme", ["tcp", "unix"])
async def test_mutual_tls_gives_the_handler_the_clients_names(
    scheme: str, server_shell: str, client_shell: str, certs: Certs, sockdir: Path
) -> None:
    with anyio.fail_after(10):
        options = server_options(certs, server_shell)
        async with call.start_server(_address(scheme, sockdir), Whoami(), options=options) as server:
            async with call.connect(
                str(server.endpoint), options=client_options(certs, client_shell, certs.client)
            ) as client:
                stub = client.stub(Whoami)
                for info in (await stub.peer(), await stub.peer_sync()):
                    assert info.uri_sans == ("spiffe://test/client",)
                    assert info.dns_sans == ("client.test",)
                    if scheme == "unix":
                        assert info.uid == os.getuid()  # both kinds of identity at once
                    else:
                        assert info.address.startswith("tcp://127.0.0.1:")


@pytest.mark.parametrize("shell", SHELLS)
async def test_large_and_many_calls_over_tls(shell: str, certs: Certs) -> None:
    """Payloads of many TLS records each way, and many calls in flight (records coalesced and split)."""
    with anyio.fail_after(20):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=server_options(certs, shell)) as server:
            options = client_options(certs, shell, certs.client)
            async with call.connect(str(server.endpoint), options=options) as client:
                stub = client.stub(Whoami)
                big = bytes(range(256)) * 8192  # 2 MiB
                assert await stub.echo(big) == big
                results: list[bytes] = []

                async def one(i: int) -> None:
                    results.append(await stub.echo(i.to_bytes(4, "big") * (1 + i * 97)))

                async with anyio.create_task_group() as tg:
                    for i in range(200):
                        tg.start_soon(one, i)
                assert sorted(results) == sorted(i.to_bytes(4, "big") * (1 + i * 97) for i in range(200))


# -- failures: each a CommunicationError that says what is wrong -----------------------


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_mutual_tls_server_refuses_clients_without_a_trusted_certificate(shell: str, certs: Certs) -> None:
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=server_options(certs, shell)) as server:
            for leaf in (None, certs.stranger):  # none at all; one signed by a CA the server does not trust
                error = await connect_error(server.endpoint, client_options(certs, shell, leaf))
                assert "client certificate" in str(error)
            # The server goes on serving clients it trusts.
            async with call.connect(str(server.endpoint), options=client_options(certs, shell, certs.client)) as client:
                assert (await client.stub(Whoami).peer()).uri_sans == ("spiffe://test/client",)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("scheme", ["tcp", "unix"])
async def test_a_client_refuses_a_server_it_does_not_trust(
    scheme: str, shell: str, certs: Certs, sockdir: Path
) -> None:
    from callrt import tls

    with anyio.fail_after(10):
        options = server_options(certs, shell, mutual=False)
        async with call.start_server(_address(scheme, sockdir), Whoami(), options=options) as server:
            untrusting = call.ClientOptions(tls=tls.client_context(certs.other_ca), transport=shell)  # type: ignore[arg-type]
            error = await connect_error(server.endpoint, untrusting)
            assert "certificate verify failed" in str(error)
            assert "TLS" in str(error)


@pytest.mark.parametrize("shell", SHELLS)
async def test_the_server_name_is_the_endpoints_host_unless_overridden(shell: str, certs: Certs) -> None:
    with anyio.fail_after(10):
        options = server_options(certs, shell, mutual=False)
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            port = server.endpoint.port
            # The certificate names 127.0.0.1 and localhost (and callrt.test): each host checks out.
            for address in (f"tcp://127.0.0.1:{port}", f"tcp://localhost:{port}"):
                async with call.connect(address, options=client_options(certs, shell)) as client:
                    await client.stub(Whoami).peer()
            named = client_options(certs, shell, tls_server_name="callrt.test")
            async with call.connect(str(server.endpoint), options=named) as client:
                await client.stub(Whoami).peer()
            error = await connect_error(server.endpoint, client_options(certs, shell, tls_server_name="elsewhere.test"))
            assert "Hostname mismatch" in str(error)
            assert "certificate" in str(error)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("scheme", ["tcp", "unix"])
async def test_a_plaintext_client_fails_cleanly_and_the_tls_server_serves_on(
    scheme: str, shell: str, certs: Certs, sockdir: Path
) -> None:
    with anyio.fail_after(10):
        options = server_options(certs, shell, mutual=False)
        async with call.start_server(_address(scheme, sockdir), Whoami(), options=options) as server:
            for _ in range(3):
                error = await connect_error(server.endpoint, call.ClientOptions(transport=shell))  # type: ignore[arg-type]
                assert "ClientOptions(tls=" in str(error)
            async with call.connect(str(server.endpoint), options=client_options(certs, shell)) as client:
                await client.stub(Whoami).peer()


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_tls_client_against_a_plaintext_server_fails_cleanly(shell: str, certs: Certs) -> None:
    with anyio.fail_after(10):
        async with call.start_server(
            "tcp://127.0.0.1:0", Whoami(), options=call.ServerOptions(transport=shell)
        ) as server:  # type: ignore[arg-type]
            error = await connect_error(server.endpoint, client_options(certs, shell))
            assert "TLS handshake" in str(error)
            async with call.connect(str(server.endpoint)) as client:  # it serves plaintext clients on
                await client.stub(Whoami).peer()


async def test_a_call_that_cannot_connect_says_why(certs: Certs) -> None:
    """The replica's last connection error is in the Unreachable a call fails with."""
    from callrt import tls

    with anyio.fail_after(10):
        options = server_options(certs, "auto", mutual=False)
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            untrusting = call.ClientOptions(
                tls=tls.client_context(certs.other_ca), pick_timeout=0.5, retry=call.RetryPolicy(max_attempts=1)
            )
            async with call.connect(str(server.endpoint), options=untrusting) as client:
                with pytest.raises(errors.CommunicationError, match="certificate verify failed"):
                    # Shielded from the test's deadline, which the call would otherwise wait for
                    # (a call's deadline bounds its wait for a replica); pick_timeout bounds it.
                    with anyio.CancelScope(shield=True):
                        await client.stub(Whoami).peer()


# -- a real worker process -------------------------------------------------------


@pytest.mark.parametrize("worker_backend", ["asyncio", "trio"])
async def test_a_worker_process_serves_mutual_tls_with_an_allow_list(worker_backend: str, certs: Certs) -> None:
    """WorkerProcess builds the TLS context from PEM paths and the policy from its rules (neither is JSON)."""
    options = {
        "tls_cert": str(certs.server.cert),
        "tls_key": str(certs.server.key),
        "tls_client_ca": str(certs.ca),
        "access": {
            "tests.Whoami": ["spiffe://test/client", "spiffe://test/other"],
            "tests.Whoami.secret": ["spiffe://test/client"],
        },
    }
    worker = WorkerProcess(
        "tcp://127.0.0.1:0", ["tests.tls_components:Whoami"], options=options, backend=worker_backend
    )
    endpoint = worker.start()
    try:
        with anyio.fail_after(15):
            async with call.connect(str(endpoint), options=client_options(certs, "auto", certs.client)) as client:
                stub = client.stub(Whoami)
                assert (await stub.peer()).uri_sans == ("spiffe://test/client",)
                assert await stub.secret() == "s3cret"
            async with call.connect(str(endpoint), options=client_options(certs, "auto", certs.other)) as client:
                stub = client.stub(Whoami)
                assert (await stub.peer()).dns_sans == ("other.test",)
                with pytest.raises(errors.PermissionDenied):
                    await stub.secret()
            error = await connect_error(endpoint, client_options(certs, "auto"))
            assert "client certificate" in str(error)
    finally:
        assert worker.stop() == 0


# -- plaintext on the network needs an opt-in ----------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", ""])
async def test_plaintext_on_a_non_loopback_address_refuses_to_start(host: str) -> None:
    with anyio.fail_after(10):
        with pytest.raises(ValueError, match=r"ServerOptions\(insecure=True\)"):
            async with call.start_server(f"tcp://{host}:0", Whoami()):
                pytest.fail("served plaintext on every address")


async def test_insecure_true_or_tls_lets_it_start(certs: Certs) -> None:
    with anyio.fail_after(10):
        async with call.start_server("tcp://0.0.0.0:0", Whoami(), options=call.ServerOptions(insecure=True)) as server:
            async with call.connect(f"tcp://127.0.0.1:{server.endpoint.port}") as client:
                assert (await client.stub(Whoami).peer()).local
        options = server_options(certs, "auto", mutual=False)
        async with call.start_server("tcp://0.0.0.0:0", Whoami(), options=options) as server:
            async with call.connect(
                f"tcp://127.0.0.1:{server.endpoint.port}", options=client_options(certs, "auto")
            ) as client:
                await client.stub(Whoami).peer()


async def test_loopback_unix_and_memory_need_no_opt_in(sockdir: Path) -> None:
    with anyio.fail_after(10):
        addresses = ["tcp://127.0.0.1:0", "tcp://localhost:0", f"unix://{sockdir}/plain.sock", "memory://plain"]
        async with call.start_server(addresses, Whoami()) as server:
            assert len(server.endpoints) == 4


# -- the helpers --------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # plain functions: one backend is enough
async def test_the_helpers_contexts(certs: Certs) -> None:
    import ssl

    from callrt import tls

    server = tls.server_context(certs.server.cert, certs.server.key)
    assert server.verify_mode is ssl.CERT_NONE  # no client certificates asked for
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2 is tls.DEFAULT_MINIMUM_VERSION
    mutual = tls.server_context(certs.server.cert, certs.server.key, client_ca_file=certs.ca)
    assert mutual.verify_mode is ssl.CERT_REQUIRED
    client = tls.client_context(certs.ca, cert_file=certs.client.cert, key_file=certs.client.key)
    assert client.verify_mode is ssl.CERT_REQUIRED and client.check_hostname
    with pytest.raises(ValueError, match="cert_file"):
        tls.client_context(certs.ca, key_file=certs.client.key)
    with pytest.raises(ssl.SSLError):
        tls.server_context(certs.server.cert, certs.client.key)  # a key that is not the certificate's


@pytest.mark.parametrize("shell", SHELLS)
async def test_no_common_tls_version_is_a_clear_error(shell: str, certs: Certs) -> None:
    import ssl

    from callrt import tls

    server_ctx = tls.server_context(certs.server.cert, certs.server.key, minimum_version=ssl.TLSVersion.TLSv1_3)
    client_ctx = tls.client_context(certs.ca)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with anyio.fail_after(10):
        options = call.ServerOptions(tls=server_ctx, transport=shell)  # type: ignore[arg-type]
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            error = await connect_error(server.endpoint, call.ClientOptions(tls=client_ctx, transport=shell))  # type: ignore[arg-type]
            assert "TLS version" in str(error)


# -- TLS handshakes count in max_connections ---------------------------------------------------


async def _closed_by_server(stream: anyio.abc.SocketStream, within: float) -> bool:
    """Whether the server closes ``stream`` (a connection that sent nothing) within ``within`` seconds."""
    with anyio.move_on_after(within):
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return True
    return False


@pytest.mark.parametrize("shell", SHELLS)
async def test_tls_handshakes_in_progress_count_in_max_connections(shell: str, certs: Certs) -> None:
    """Connections that never finish their TLS handshake (they send nothing) count from accept: the
    server holds ``max_connections`` of them, closes the others at once, before any TLS work, and
    refuses a real client until they go; then it serves again."""
    limit, extra = 4, 6
    options = server_options(certs, shell, mutual=False, max_connections=limit, handshake_timeout=30.0)
    with anyio.fail_after(20):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            port = server.endpoint.port
            half_open = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(limit + extra)]
            closed: list[bool] = [False] * len(half_open)
            async with anyio.create_task_group() as tg:

                async def watch(i: int) -> None:
                    closed[i] = await _closed_by_server(half_open[i], within=1.0)

                for i in range(len(half_open)):
                    tg.start_soon(watch, i)
            assert closed.count(True) == extra, closed  # (the handshake timeout is 30 s away)
            assert server.handshaking == limit and not server.connections
            error = await connect_error(server.endpoint, client_options(certs, shell))
            assert "TLS" in str(error)  # closed before its handshake: it backs off and retries
            for stream in half_open:
                await stream.aclose()
            while server.handshaking:  # noqa: ASYNC110  # the server's handshakes see the ends
                await anyio.sleep(0.01)
            async with call.connect(str(server.endpoint), options=client_options(certs, shell)) as client:
                assert (await client.stub(Whoami).peer()).local
            assert server.handshaking == 0


@pytest.mark.parametrize("shell", SHELLS)
async def test_the_handshake_timeout_bounds_a_tls_handshake(shell: str, certs: Certs) -> None:
    """A connection that never finishes its TLS handshake is closed after ``handshake_timeout``, and
    its place under ``max_connections`` is free again."""
    options = server_options(certs, shell, mutual=False, max_connections=2, handshake_timeout=0.3)
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            silent = [await anyio.connect_tcp("127.0.0.1", server.endpoint.port) for _ in range(2)]
            start = anyio.current_time()
            for stream in silent:
                assert await _closed_by_server(stream, within=3.0)
                await stream.aclose()
            assert 0.25 <= anyio.current_time() - start < 3.0
            while server.handshaking:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            async with call.connect(str(server.endpoint), options=client_options(certs, shell)) as client:
                assert (await client.stub(Whoami).peer()).local


async def test_the_memory_transport_refuses_tls(certs: Certs) -> None:
    """memory:// has no TLS: asked for it, a server does not start (rather than serve plaintext
    that a test of TLS would take for TLS), and a client cannot connect."""
    with anyio.fail_after(10):
        options = server_options(certs, "auto", mutual=False)
        with pytest.raises(ValueError, match=r"memory://tls: the memory transport has no TLS \(ServerOptions.tls"):
            async with call.start_server(["tcp://127.0.0.1:0", "memory://tls"], Whoami(), options=options):
                pytest.fail("the server started")
        async with call.start_server("memory://tls", Whoami()) as server:  # the name is free again
            error = await connect_error(server.endpoint, client_options(certs, "auto"))
            assert "the memory transport has no TLS (ClientOptions.tls is set)" in str(error)


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_tls_client_that_sends_its_hello_and_goes_leaves_nothing_behind(shell: str, certs: Certs) -> None:
    """A client's hello comes with the end of the TLS handshake (the server's protocol is attached
    after it); one that sends it and closes at once is answered or not, but leaves no connection
    and no handshake counted."""
    from anyio.streams.tls import TLSStream

    from callrt.protocol import DEFAULT_MAX_FRAME_SIZE, Hello, encode_hello

    options = server_options(certs, shell, mutual=False)
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            for _ in range(5):
                raw = await anyio.connect_tcp("127.0.0.1", server.endpoint.port)
                stream = await TLSStream.wrap(
                    raw, hostname="localhost", ssl_context=certs.client_context(), standard_compatible=False
                )
                await stream.send(encode_hello(Hello(1, 2, DEFAULT_MAX_FRAME_SIZE)))
                await stream.aclose()
            while server.connections or server.handshaking:  # noqa: ASYNC110  # the server sees the ends
                await anyio.sleep(0.01)
            async with call.connect(str(server.endpoint), options=client_options(certs, shell)) as client:
                assert (await client.stub(Whoami).peer()).local


# -- the asyncio shell's TLS transport (callrt.transport._tls) ------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
async def test_session_tickets_and_other_records_before_the_first_reply(shell: str, certs: Certs) -> None:
    """TLS 1.3 servers send session tickets after the handshake: records that carry no data, read
    before (or with) the first reply. Sixteen of them, then calls both ways."""
    context = certs.server_context()
    context.num_tickets = 16
    options = call.ServerOptions(tls=context, transport=shell)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            async with call.connect(str(server.endpoint), options=client_options(certs, shell, certs.client)) as client:
                stub = client.stub(Whoami)
                assert (await stub.peer()).uri_sans == ("spiffe://test/client",)
                assert await stub.echo(b"x" * 100_000) == b"x" * 100_000


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the asyncio shell's: trio serves TLS through anyio streams
async def test_the_asyncio_shell_ends_tls_with_close_notify_both_ways(certs: Certs) -> None:
    """A server that closes sends close_notify (a strict TLS client sees a clean end, not a
    truncation), and a client's close_notify is answered with the server's."""
    from anyio.streams.tls import TLSStream

    from callrt.protocol import DEFAULT_MAX_FRAME_SIZE, Hello, encode_hello

    async def strict_client(port: int) -> TLSStream:
        raw = await anyio.connect_tcp("127.0.0.1", port)
        stream = await TLSStream.wrap(raw, hostname="localhost", ssl_context=certs.client_context(certs.client))
        await stream.send(encode_hello(Hello(1, 2, DEFAULT_MAX_FRAME_SIZE)))
        await stream.receive()  # the hello reply
        return stream

    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=server_options(certs, "auto")) as server:
            port = server.endpoint.port
            leaving = await strict_client(port)
            await leaving.aclose()  # close_notify, then waits for the server's: raises without it
            while server.connections:  # noqa: ASYNC110  # the server sees the end
                await anyio.sleep(0.01)
            staying = await strict_client(port)
        # The server has drained and closed: what follows its goaway is a clean end.
        with pytest.raises(anyio.EndOfStream):
            while True:
                await staying.receive()
        await staying.aclose()


async def how_it_ends(tls: anyio.abc.ByteStream) -> str:
    """Read a strict TLS stream (``standard_compatible``) to its end, then close it: how the peer ended it."""
    try:
        while True:
            await tls.receive()
    except anyio.EndOfStream:
        return "close_notify"
    except anyio.BrokenResourceError:  # standard_compatible: an EOF without close_notify
        return "truncated"
    finally:
        await anyio.aclose_forcefully(tls)


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_client_ends_tls_with_close_notify(shell: str, certs: Certs) -> None:
    """A client that closes its connection sends close_notify: a strict TLS server sees a clean
    end of stream, not a truncation (before, the client closed the socket without it)."""
    from anyio.streams.tls import TLSStream

    from callrt.protocol import DEFAULT_MAX_FRAME_SIZE, HELLO_SIZE, HelloReply, encode_hello_reply

    ends: list[str] = []

    async def strict_server(stream: anyio.abc.SocketStream) -> None:
        tls = await TLSStream.wrap(stream, server_side=True, ssl_context=certs.server_context(mutual=False))
        hello = b""
        while len(hello) < HELLO_SIZE:
            hello += await tls.receive()
        await tls.send(encode_hello_reply(HelloReply(2, DEFAULT_MAX_FRAME_SIZE)))
        ends.append(await how_it_ends(tls))

    with anyio.fail_after(10):
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, strict_server)
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            endpoint = parse_endpoint(f"tcp://127.0.0.1:{port}")
            options = client_options(certs, shell)
            async with TransportSelector(options.transport).for_endpoint(endpoint).connect(endpoint, options):
                pass
            while not ends:  # noqa: ASYNC110  # the server sees the end
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert ends == ["close_notify"]


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_server_ends_tls_with_close_notify(shell: str, certs: Certs) -> None:
    """A server that closes a connection (here at its idle timeout) sends close_notify: a strict TLS
    client sees a clean end of stream, not a truncation (before, the stream shell closed without it)."""
    from anyio.streams.tls import TLSStream

    from callrt.protocol import Hello, encode_hello

    options = server_options(certs, shell, mutual=False, handshake_timeout=2.0, idle_timeout=0.2)
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Whoami(), options=options) as server:
            assert server.endpoint is not None
            stream = await anyio.connect_tcp(server.endpoint.host, server.endpoint.port)
            tls = await TLSStream.wrap(stream, hostname="localhost", ssl_context=certs.client_context())
            await tls.send(encode_hello(Hello(1, 1, 1 << 20)))
            end = await how_it_ends(tls)  # after the hello's reply, nothing until the server closes
    assert end == "close_notify"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_tls_transport_holds_a_write_the_socket_cannot_take_and_pauses_the_writer(certs: Certs) -> None:
    """Over a real socket whose reader is paused, a 4 MiB write fills the socket: the rest waits
    (OpenSSL's write is repeated with the same buffer when the socket is writable), the protocol is
    paused above the high-water mark and resumed once it is written; every byte arrives in order,
    and close sends close_notify after the buffered bytes (the reader sees an EOF, not an error)."""
    import asyncio
    import socket

    from callrt.transport._tls import TLSSocketTransport, run_handshake

    class Recorder(asyncio.Protocol):
        def __init__(self) -> None:
            self.events: list[str] = []
            self.received = bytearray()
            self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
            self.got_all = anyio.Event()
            self.expected = 0

        def data_received(self, data: bytes) -> None:
            self.received += data
            if len(self.received) >= self.expected:
                self.got_all.set()

        def pause_writing(self) -> None:
            self.events.append("pause")

        def resume_writing(self) -> None:
            self.events.append("resume")

        def eof_received(self) -> None:
            self.events.append("eof")

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set_result(exc)

    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.setblocking(False)
    server = certs.server_context(mutual=False).wrap_socket(a, server_side=True, do_handshake_on_connect=False)
    client = certs.client_context().wrap_socket(b, server_hostname="localhost", do_handshake_on_connect=False)
    with anyio.fail_after(10):
        await asyncio.gather(run_handshake(loop, server), run_handshake(loop, client))
        sender, receiver = Recorder(), Recorder()
        payload = os.urandom(4 * 1024 * 1024)
        receiver.expected = len(payload)
        writing = TLSSocketTransport(loop, server, sender)
        reading = TLSSocketTransport(loop, client, receiver)
        reading.pause_reading()
        writing.write(b"head")
        writing.write(payload[4:])
        assert writing.get_write_buffer_size() > 64 * 1024  # held: the socket took a fraction
        assert sender.events == ["pause"]
        reading.resume_reading()
        await receiver.got_all.wait()
        assert bytes(receiver.received) == b"head" + payload[4:]
        assert sender.events == ["pause", "resume"]
        assert writing.get_write_buffer_size() == 0
        writing.write(b"last words")
        writing.close()
        assert writing.is_closing()
        assert await sender.lost is None
        assert await receiver.lost is None
        assert receiver.events == ["eof"]
        assert bytes(receiver.received).endswith(b"last words")
