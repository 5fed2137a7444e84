"""Logging (issue 12, point 7): the standard ``logging`` module, ``callrt.*`` loggers, nothing printed unconfigured.

- ERROR (``callrt.server``): unexpected handler exceptions and unencodable results, with the
  method, the caller and the traceback; errors a handler raises on purpose are not logged;
  a flood of them is rate-limited, counting what it holds back;
- WARNING: a peer that broke the protocol (server and client side), with its address, its
  text escaped and bounded;
- INFO: serving, draining (and a client told goaway); DEBUG: connections, replica states,
  failed connection attempts with the reason;
- a worker process whose application configures no logging prints nothing at all.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import select
import signal
import subprocess
import sys
import time

import anyio
import anyio.abc
import pytest

from callrt import call
from callrt.connection._logs import BURST, LogLimiter, loggable
from callrt.errors import NoReplicaInTime, RemoteError, SessionLost, UnknownMethod
from callrt.protocol import SUPPORTED_VERSIONS, Cancel, HelloReply, Settings, encode_frame, encode_hello_reply
from callrt.transport.base import client_hello
from tests.logging_components import Faulty, OutOfStock

pytestmark = pytest.mark.anyio

SHELLS = ["auto", "stream"]

# Not a callrt peer, with a terminal escape and line breaks that must not reach a log as they are.
JUNK = b"GET / HTTP/1.1\r\n\x1b[2J\x1b[31mForged: line\r\n\r\n" + bytes(range(256))


def _options(shell: str) -> call.ServerOptions:
    return call.ServerOptions(transport=shell)  # type: ignore[arg-type]


def _records(caplog: pytest.LogCaptureFixture, name: str, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name and r.levelno == level]


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="callrt")
    return caplog


# -- handler failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
async def test_an_unexpected_handler_exception_is_an_error_with_method_caller_and_traceback(
    shell: str, log: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Faulty(), options=_options(shell)) as server:
            async with call.connect(str(server.endpoint)) as client:
                with pytest.raises(RemoteError, match="no item 7"):
                    await client.stub(Faulty).boom(7)
    (record,) = _records(log, "callrt.server", logging.ERROR)
    message = record.getMessage()
    assert message.startswith("tests.Faulty.boom failed for tcp://127.0.0.1:"), message
    assert "KeyError: 'no item 7'" in message
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    text = logging.Formatter().format(record)
    assert "Traceback (most recent call last)" in text and 'raise KeyError(f"no item {n}")' in text


@pytest.mark.parametrize("shell", SHELLS)
async def test_an_unencodable_result_is_an_error(shell: str, log: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Faulty(), options=_options(shell)) as server:
            async with call.connect(str(server.endpoint)) as client:
                with pytest.raises(RemoteError, match="result cannot be encoded"):
                    await client.stub(Faulty).unencodable()
    (record,) = _records(log, "callrt.server", logging.ERROR)
    assert record.getMessage().startswith("tests.Faulty.unencodable failed for tcp://127.0.0.1:")
    assert "result cannot be encoded" in record.getMessage()


@pytest.mark.parametrize("shell", SHELLS)
async def test_errors_raised_on_purpose_are_not_logged(shell: str, log: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Faulty(), options=_options(shell)) as server:
            async with call.connect(str(server.endpoint)) as client:
                faulty = client.stub(Faulty)
                with pytest.raises(RemoteError, match="out of stock") as refused:
                    await faulty.refuse("x1")
                assert refused.value.remote_type.endswith(OutOfStock.__qualname__)
                with pytest.raises(RemoteError, match="n=3 is not allowed"):
                    await faulty.invalid(3)
                with pytest.raises(UnknownMethod):
                    await client.stub(Faulty, name="tests.Elsewhere").ok(1)
                assert await faulty.ok(1) == 1
    assert [r for r in log.records if r.levelno >= logging.WARNING] == []


async def test_a_flood_of_failures_is_rate_limited(log: pytest.LogCaptureFixture) -> None:
    calls = 200
    with anyio.fail_after(20):
        async with call.start_server("tcp://127.0.0.1:0", Faulty()) as server:
            async with call.connect(str(server.endpoint)) as client:
                boom = client.stub(Faulty).boom
                started = time.monotonic()
                for n in range(calls):
                    with pytest.raises(RemoteError):
                        await boom(n)
                seconds = time.monotonic() - started
    logged = len(_records(log, "callrt.server", logging.ERROR))
    windows = math.ceil(seconds) + 1  # the calls may straddle one more second than they took
    assert 1 <= logged <= min(calls, BURST * windows), (logged, seconds)
    if seconds < 1:
        assert logged == BURST


def test_the_limiter_counts_what_it_holds_back() -> None:
    now = [0.0]
    limiter = LogLimiter(burst=3, period=1.0, clock=lambda: now[0])
    assert [limiter.allow("a.m") for _ in range(6)] == [0, 0, 0, None, None, None]
    assert limiter.allow("b.m") == 0  # per key
    now[0] = 0.5
    assert limiter.allow("a.m") is None
    now[0] = 1.0  # a new second: the first record says how many were held back
    assert limiter.allow("a.m") == 4
    assert limiter.allow("a.m") == 0


# -- peers breaking the protocol --------------------------------------------------------------------


def test_loggable_text_is_escaped_and_bounded() -> None:
    assert loggable("a\x1b[31mb\r\nc\u00e9\udcff") == "a\\x1b[31mb\\r\\nc\\xe9\\udcff"
    assert loggable("x" * 1000, limit=10) == "x" * 10 + "... [990 more]"
    assert loggable("plain text") == "plain text"


@pytest.mark.parametrize("shell", SHELLS)
async def test_junk_on_the_port_is_a_warning_naming_the_peer(shell: str, log: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Faulty(), options=_options(shell)) as server:
            async with await anyio.connect_tcp("127.0.0.1", server.endpoint.port) as stream:
                port = stream.extra(anyio.abc.SocketAttribute.local_port)
                await stream.send(JUNK)
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    while True:
                        await stream.receive()  # until the server closes it
            async with call.connect(str(server.endpoint)) as client:
                assert await client.stub(Faulty).ok(5) == 5  # the server goes on
    (record,) = _records(log, "callrt.server", logging.WARNING)
    message = record.getMessage()
    assert message.startswith(f"tcp://127.0.0.1:{port} broke the protocol, connection closed: "), message
    assert message.isascii() and message.isprintable() and len(message) < 500, message


@pytest.mark.parametrize("shell", SHELLS)
async def test_a_connection_over_max_connections_is_a_warning(shell: str, log: pytest.LogCaptureFixture) -> None:
    options = call.ServerOptions(transport=shell, max_connections=1)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        async with call.start_server("tcp://127.0.0.1:0", Faulty(), options=options) as server:
            async with call.connect(str(server.endpoint)) as client:
                assert await client.stub(Faulty).ok(1) == 1  # holds the one connection
                async with await anyio.connect_tcp("127.0.0.1", server.endpoint.port) as stream:
                    port = stream.extra(anyio.abc.SocketAttribute.local_port)
                    await stream.send(client_hello(call.ClientOptions()))
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        while True:
                            await stream.receive()  # the refusal, then the close
    (record,) = _records(log, "callrt.server", logging.WARNING)
    assert record.getMessage() == f"refused a connection from tcp://127.0.0.1:{port}: at max_connections (1)"


async def test_a_server_breaking_the_protocol_is_a_client_warning(log: pytest.LogCaptureFixture) -> None:
    """A server answers the hello, then sends a frame no server may send: the client warns, naming it."""

    async def misbehave(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()  # the client's hello
            await stream.send(
                encode_hello_reply(HelloReply(SUPPORTED_VERSIONS[-1], 1 << 20)) + encode_frame(Settings())
            )
            await stream.receive()  # a request
            await stream.send(encode_frame(Cancel(1)))
            await stream.receive()  # until the client hangs up

    with anyio.fail_after(10):
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, _ignoring_errors(misbehave))
                async with call.connect(f"tcp://127.0.0.1:{port}") as client:
                    with pytest.raises(SessionLost):
                        await client.stub(Faulty).ok.options(call.CallOptions(retry=False))(1)
                tg.cancel_scope.cancel()
    (record,) = _records(log, "callrt.client", logging.WARNING)
    assert record.getMessage() == (
        f"tcp://127.0.0.1:{port} broke the protocol, connection closed: a server may not send Cancel frames"
    )


def _ignoring_errors(handler: object) -> object:
    @functools.wraps(handler)  # type: ignore[arg-type]
    async def run(stream: anyio.abc.SocketStream) -> None:
        try:
            await handler(stream)  # type: ignore[operator]
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass

    return run


# -- drains, goaway, connections, replicas ------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
async def test_serving_and_draining_are_info_connections_debug(shell: str, log: pytest.LogCaptureFixture) -> None:
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            served = anyio.Event()

            async def serve(*, task_status: anyio.abc.TaskStatus[call.Server]) -> None:
                await call.serve("tcp://127.0.0.1:0", Faulty(), options=_options(shell), task_status=task_status)
                served.set()

            server = await tg.start(serve)
            endpoint = str(server.endpoint)
            async with call.connect(endpoint) as client:
                assert await client.stub(Faulty).ok(1) == 1
                server.stop()
                await served.wait()  # the drain waited for this client to leave after the goaway
    infos = [r.getMessage() for r in _records(log, "callrt.server", logging.INFO)]
    assert infos[0] == f"serving tests.Faulty on {endpoint}"
    assert f"stopped accepting on {endpoint}; draining" in infos
    assert "draining: goaway sent on 1 connections; their calls have up to 5.0s to finish" in infos
    assert infos[-1] == f"stopped serving on {endpoint}"
    debug = [r.getMessage() for r in _records(log, "callrt.server", logging.DEBUG)]
    assert any(m.startswith("connection from tcp://127.0.0.1:") and m.endswith("accepted (1 open)") for m in debug)
    assert any(m.startswith("connection from tcp://127.0.0.1:") and m.endswith("closed (0 open)") for m in debug)
    client_info = [r.getMessage() for r in _records(log, "callrt.client", logging.INFO)]
    assert f"{endpoint} is draining (goaway): no new calls go to it" in client_info
    states = [r.getMessage() for r in _records(log, "callrt.client", logging.DEBUG)]
    assert f"replica {endpoint}: connecting -> available" in states
    assert f"replica {endpoint}: available -> draining" in states


async def test_failed_connection_attempts_are_debug_with_the_reason(log: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with anyio.fail_after(10):
        async with call.connect(endpoint) as client:
            with pytest.raises(NoReplicaInTime):
                with anyio.fail_after(0.5):
                    await client.stub(Faulty).ok(1)
    debug = [r.getMessage() for r in _records(log, "callrt.client", logging.DEBUG)]
    assert any(
        m.startswith(f"cannot connect to {endpoint}: connection refused (next attempt in up to ") for m in debug
    ), debug
    assert f"replica {endpoint}: connecting -> unavailable" in debug


# -- nothing printed unless the application configures logging ------------------------------------------

_CONFIGURED = "import logging, sys; logging.basicConfig(); from callrt.testing.worker import main; main(sys.argv[1:])"


@pytest.mark.parametrize("configured", [False, True], ids=["unconfigured", "basicConfig"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_worker_prints_nothing_unless_logging_is_configured(backend: str, configured: bool) -> None:
    """A real worker: a failing call, an unencodable result and a junk connection, then SIGTERM.

    Unconfigured, its stderr stays empty; with ``logging.basicConfig()`` (the control) the same
    session writes the ERROR and WARNING records there.
    """
    args = ["--address", "tcp://127.0.0.1:0", "--backend", backend, "tests.logging_components:Faulty"]
    command = (
        [sys.executable, "-c", _CONFIGURED, *args]
        if configured
        else [sys.executable, "-m", "callrt.testing.worker", *args]
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("READY "), line
        endpoint = line.split(" ", 1)[1].strip()
        anyio.run(_misuse, endpoint)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    if configured:
        assert "ERROR:callrt.server:tests.Faulty.boom failed for tcp://127.0.0.1:" in stderr, stderr
        assert "ERROR:callrt.server:tests.Faulty.unencodable failed for" in stderr, stderr
        assert "WARNING:callrt.server:tcp://127.0.0.1:" in stderr and "broke the protocol" in stderr, stderr
        assert "Traceback (most recent call last)" in stderr
    else:
        assert stderr == ""


async def _misuse(endpoint: str) -> None:
    with anyio.fail_after(10):
        async with call.connect(endpoint) as client:
            faulty = client.stub(Faulty)
            with pytest.raises(RemoteError, match="no item 1"):
                await faulty.boom(1)
            with pytest.raises(RemoteError, match="result cannot be encoded"):
                await faulty.unencodable()
            with pytest.raises(RemoteError, match="out of stock"):
                await faulty.refuse("x")
        port = int(endpoint.rpartition(":")[2])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(JUNK)
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                while True:
                    await stream.receive()
