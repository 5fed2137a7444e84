"""Misuse and failure, as a new user meets them: each error names what to fix (issue 12, point 6).

Bind failures are ``OSError`` naming the address (never an exception group); a live Unix socket
path is never taken over, a stale one is reclaimed, a drained server removes its socket file; a
call that finds no replica says why, per endpoint; a deadline that comes while waiting for a
replica is a ``TimeoutError`` naming the method and the cause; a class given to ``serve`` and a
port out of range are refused with their own message. Both shells (``"auto"`` is the asyncio
Protocol shell on asyncio, anyio streams on trio; ``"stream"`` is anyio streams everywhere), with
real sockets, and worker processes where a user would have them.
"""

from __future__ import annotations

import errno
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from callrt import call
from callrt.endpoints import parse_endpoint
from callrt.errors import NoReplicaInTime, Unreachable
from callrt.testing import WorkerProcess
from tests.components import Echo

pytestmark = pytest.mark.anyio

SHELLS = ["auto", "stream"]


def _server_options(shell: str) -> call.ServerOptions:
    return call.ServerOptions(transport=shell)  # type: ignore[arg-type]


def _dead_tcp() -> str:
    """A loopback address nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def _stale_socket(path: Path) -> None:
    """A socket file nobody listens on, as a server that crashed leaves it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert path.is_socket()


# -- binding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_tcp_port_in_use_is_an_oserror_naming_the_address(shell: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with anyio.fail_after(10):
            with pytest.raises(OSError) as caught:
                async with call.start_server(f"tcp://127.0.0.1:{port}", Echo(), options=_server_options(shell)):
                    pytest.fail("bound a port in use")
    assert type(caught.value) is OSError  # not an exception group
    assert caught.value.errno == errno.EADDRINUSE
    assert f"cannot listen on tcp://127.0.0.1:{port}: address already in use" in str(caught.value)


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_live_unix_socket_is_never_taken_over(shell: str, anyio_backend_name: str, sockdir: Path) -> None:
    path = sockdir / "live.sock"
    backend = "trio" if anyio_backend_name == "trio" else "asyncio"
    with WorkerProcess(f"unix://{path}", ["tests.components:Echo"], backend=backend) as worker:
        with anyio.fail_after(10):
            with pytest.raises(OSError) as caught:
                async with call.start_server(f"unix://{path}", Echo(), options=_server_options(shell)):
                    pytest.fail("took over a live socket")
            assert caught.value.errno == errno.EADDRINUSE
            assert f"another server is listening on unix://{path}" in str(caught.value)
            # The first server still has its path, and serves on it.
            async with call.connect(str(worker.endpoint)) as client:
                assert await client.stub(Echo).echo(b"still mine") == b"still mine"
        assert worker.stop() == 0
    assert not path.exists(), "the worker's drain removes its socket file"


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_stale_unix_socket_is_reclaimed(shell: str, sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    _stale_socket(path)
    with anyio.fail_after(10):
        async with call.start_server(f"unix://{path}", Echo(), options=_server_options(shell)) as server:
            async with call.connect(str(server.endpoint)) as client:
                assert await client.stub(Echo).echo(b"x") == b"x"
    assert not path.exists()


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_path_that_is_not_a_socket_is_left_alone(shell: str, sockdir: Path) -> None:
    path = sockdir / "data.sock"
    path.write_text("precious")
    with anyio.fail_after(10):
        with pytest.raises(
            FileExistsError, match=rf"cannot listen on unix://{path}: the path exists and is not a socket"
        ):
            async with call.start_server(f"unix://{path}", Echo(), options=_server_options(shell)):
                pytest.fail("bound over a file")
    assert path.read_text() == "precious"


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_unix_socket_in_a_missing_directory_names_the_path(shell: str, sockdir: Path) -> None:
    path = sockdir / "no" / "such" / "dir.sock"
    with anyio.fail_after(10):
        with pytest.raises(FileNotFoundError, match=rf"cannot listen on unix://{path}: no such file or directory"):
            async with call.start_server(f"unix://{path}", Echo(), options=_server_options(shell)):
                pytest.fail("bound in a missing directory")


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_drained_server_removes_its_socket_file_only(shell: str, sockdir: Path) -> None:
    path = sockdir / "mine.sock"
    with anyio.fail_after(10):
        async with call.start_server(f"unix://{path}", Echo(), options=_server_options(shell)):
            assert path.is_socket()
        assert not path.exists()
        # A file that replaced ours while we served (another server's, say) is not ours to remove.
        async with call.start_server(f"unix://{path}", Echo(), options=_server_options(shell)):
            path.unlink()
            path.write_text("someone else's")
        assert path.read_text() == "someone else's"


@pytest.mark.parametrize("shell", SHELLS)
async def test_every_endpoint_of_a_failed_start_is_released(shell: str, sockdir: Path) -> None:
    """The second address fails: the first one's socket file is removed, and the error names the second."""
    first, second = sockdir / "first.sock", sockdir / "second.sock"
    second.write_text("not a socket")
    with anyio.fail_after(10):
        with pytest.raises(FileExistsError, match=rf"unix://{second}"):
            async with call.start_server(
                [f"unix://{first}", f"unix://{second}"], Echo(), options=_server_options(shell)
            ):
                pytest.fail("started")
    assert not first.exists()


# -- no replica: why --------------------------------------------------------------------------


async def _unreachable_message(endpoint: str, **options: object) -> str:
    """Why a call to ``endpoint`` found no replica, when its deadline came (with its first attempt done)."""
    client_options = call.ClientOptions(**options)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.connect(endpoint, options=client_options) as client:
            with pytest.raises(NoReplicaInTime) as caught:
                with anyio.fail_after(1.0):
                    await client.stub(Echo).echo(b"x")
    return str(caught.value)


def _says(message: str, endpoint: str, reason: str) -> bool:
    """Whether ``message`` gives ``reason`` for ``endpoint``: failed, or trying again after failing so."""
    states = r"(unavailable \(|connecting \(last attempt: )"
    return re.search(rf"{re.escape(endpoint)} {states}{re.escape(reason)}", message) is not None


async def test_no_replica_refused_says_connection_refused() -> None:
    endpoint = _dead_tcp()
    message = await _unreachable_message(endpoint)
    assert message.startswith("tests.Echo.echo: deadline reached while waiting for a replica"), message
    assert _says(message, endpoint, "connection refused)"), message


async def test_no_replica_missing_socket_file_says_no_such_file(sockdir: Path) -> None:
    endpoint = f"unix://{sockdir}/nobody.sock"
    message = await _unreachable_message(endpoint)
    assert _says(message, endpoint, "no such file)"), message


async def test_no_replica_stale_socket_file_says_connection_refused(sockdir: Path) -> None:
    endpoint = f"unix://{sockdir}/crashed.sock"
    _stale_socket(sockdir / "crashed.sock")
    message = await _unreachable_message(endpoint)
    assert _says(message, endpoint, "connection refused)"), message


async def test_no_replica_unresolvable_name_says_name_not_resolved() -> None:
    endpoint = "tcp://no-such-host.invalid:9000"
    message = await _unreachable_message(endpoint)
    assert _says(message, endpoint, "name not resolved ("), message


async def test_no_replica_silent_server_says_handshake_timed_out() -> None:
    """Something accepts connections but never answers the hello (not a callrt server, or hung)."""
    with anyio.fail_after(10):
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                accepted: list[anyio.abc.SocketStream] = []
                tg.start_soon(listener.serve, _keep(accepted))
                message = await _unreachable_message(f"tcp://127.0.0.1:{port}", handshake_timeout=0.2)
                tg.cancel_scope.cancel()
            for stream in accepted:
                await stream.aclose()
    assert _says(message, f"tcp://127.0.0.1:{port}", "handshake timed out after 0.2s)"), message


async def test_no_replica_http_server_says_the_handshake_failed() -> None:
    """Something answers the hello with bytes that are not callrt's (an HTTP server, say)."""

    async def answer_http(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                await stream.receive()
                await stream.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass

    with anyio.fail_after(10):
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, answer_http)
                message = await _unreachable_message(f"tcp://127.0.0.1:{port}")
                tg.cancel_scope.cancel()
    assert _says(message, f"tcp://127.0.0.1:{port}", "the server closed the connection during the handshake: "), message
    assert "not a callrt peer" in message, message


def _keep(accepted: list[anyio.abc.SocketStream]) -> Callable[[anyio.abc.SocketStream], Awaitable[None]]:
    async def handle(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)  # held open, never answered

    return handle


async def test_a_deadline_while_waiting_for_a_replica_is_a_timeout_that_says_why() -> None:
    dead, missing = _dead_tcp(), "unix:///nonexistent-callrt-dir/x.sock"
    with anyio.fail_after(10):
        async with call.connect([dead, missing], options=call.ClientOptions(pick_timeout=30)) as client:
            echo = client.stub(Echo)
            for _ in range(3):  # the first call waits for the first attempts; later ones know them already
                started = time.monotonic()
                with pytest.raises(TimeoutError) as caught:
                    with anyio.fail_after(0.3):
                        await echo.echo(b"x")
                waited = time.monotonic() - started
                assert 0.3 - 0.03 - 0.002 <= waited < 0.3 + 0.5, waited  # gave up at most 30 ms early
                error = caught.value
                assert isinstance(error, NoReplicaInTime) and isinstance(error, Unreachable)
                message = str(error)
                assert message.startswith("tests.Echo.echo: deadline reached while waiting for a replica"), message
                assert _says(message, dead, "connection refused)"), message
                assert _says(message, missing, "no such file)"), message


async def test_without_a_deadline_the_wait_is_pick_timeout_and_the_error_says_why() -> None:
    """No deadline (so no fail_after here: pick_timeout bounds the call): Unreachable, not a TimeoutError."""
    endpoint = _dead_tcp()
    async with call.connect(endpoint, options=call.ClientOptions(pick_timeout=0.5)) as client:
        started = time.monotonic()
        with pytest.raises(Unreachable) as caught:
            await client.stub(Echo).echo(b"x")
        assert time.monotonic() - started < 0.5 + 1.0
    assert not isinstance(caught.value, TimeoutError)
    message = str(caught.value)
    assert message.startswith(f"tests.Echo.echo: no available replica among 1: {endpoint} "), message
    assert _says(message, endpoint, "connection refused)"), message


async def test_without_a_deadline_fail_fast_names_the_method() -> None:
    with anyio.fail_after(10):
        async with call.connect(_dead_tcp(), options=call.ClientOptions(fail_fast=True)) as client:
            with pytest.raises(Unreachable, match=r"^tests\.Echo\.echo: no available replica among 1: "):
                await client.stub(Echo).echo(b"x")


async def test_connect_takes_a_url_or_a_list_of_urls() -> None:
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Echo()) as server:
            async with call.connect(str(server.endpoint)) as client:
                assert await client.stub(Echo).echo(b"one") == b"one"
            async with call.connect([str(server.endpoint), _dead_tcp()]) as client:
                assert await client.stub(Echo).echo(b"list") == b"list"


# -- arguments ---------------------------------------------------------------------------------


async def test_serve_refuses_a_class_where_an_instance_is_needed() -> None:
    with anyio.fail_after(10):
        with pytest.raises(TypeError, match=r"needs component instances, not classes: pass Echo\(\) not Echo$"):
            async with call.start_server("tcp://127.0.0.1:0", Echo):
                pytest.fail("served a class")
        with pytest.raises(TypeError, match=r"pass Echo\(\) not Echo"):
            await call.serve("tcp://127.0.0.1:0", Echo)


@pytest.mark.parametrize("port", ["99999", "65536"])
async def test_a_port_out_of_range_says_so(port: str) -> None:
    with pytest.raises(ValueError, match=rf"port {port} out of range 0-65535"):
        parse_endpoint(f"tcp://127.0.0.1:{port}")
    with pytest.raises(ValueError, match=rf"port {port} out of range 0-65535"):
        async with call.start_server(f"tcp://127.0.0.1:{port}", Echo()):
            pytest.fail("served on a port out of range")
    with pytest.raises(ValueError, match=rf"port {port} out of range 0-65535"):
        async with call.connect(f"tcp://127.0.0.1:{port}"):
            pytest.fail("connected to a port out of range")


def test_an_address_without_a_port_still_says_host_port() -> None:
    with pytest.raises(ValueError, match=r"must be host:port"):
        parse_endpoint("tcp://127.0.0.1")
    with pytest.raises(ValueError, match=r"must be host:port"):
        parse_endpoint("tcp://127.0.0.1:http")
    assert parse_endpoint("tcp://127.0.0.1:65535").port == 65535


async def test_os_error_message_is_not_the_repr_of_none() -> None:
    """An OSError without an errno (a Unix path too long) reads as a sentence, not ``[Errno None]``."""
    path = "/tmp/" + "x" * 120 + ".sock"
    with pytest.raises(OSError) as caught:
        async with call.start_server(f"unix://{path}", Echo()):
            pytest.fail("bound a path too long")
    assert str(caught.value) == f"cannot listen on unix://{path}: AF_UNIX path too long"
