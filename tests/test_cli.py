"""The ``callrt`` command, run as a subprocess (``python -m callrt``) against real worker processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anyio
import msgspec
import pytest

from callrt import call
from callrt.reflection import ServiceInfo
from callrt.testing import WorkerProcess
from tests.components import Bag, Color, Item, Lab, Mixed, Point
from tests.etcd_server import running_etcd
from tests.support import serving
from tests.test_integration import dead_tcp_endpoint, sample_bag

ROOT = Path(__file__).resolve().parent.parent


def callrt(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "callrt", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module", params=["asyncio", "trio"], ids=["server=asyncio", "server=trio"])
def worker(request: pytest.FixtureRequest) -> Iterator[str]:
    w = WorkerProcess("tcp://127.0.0.1:0", ["tests.components:Lab", "tests.components:Echo"], backend=request.param)
    w.start()
    yield str(w.endpoint)
    assert w.stop() == 0


def test_list(worker: str) -> None:
    done = callrt("list", worker)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "tests.Lab" in lines
    assert "  add(a: int, b: int) -> int" in lines
    assert "  once_unsafe(marker: str, seconds: float) -> int  [not retriable]" in lines
    assert "  echo(data: bytes) -> bytes" in lines
    assert "callrt.Reflection" not in done.stdout

    done = callrt("list", "--json", worker)
    assert done.returncode == 0, done.stderr
    info = msgspec.json.decode(done.stdout, type=ServiceInfo)
    assert [c.name for c in info.components] == ["callrt.Affinity", "callrt.Health", "tests.Echo", "tests.Lab"]
    assert "Bag" in info.defs


def test_call_by_position_and_by_name(worker: str) -> None:
    done = callrt("call", worker, "tests.Lab.add", "[2, 3]")
    assert (done.returncode, done.stdout) == (0, "5\n"), done.stderr
    done = callrt("call", worker, "tests.Lab.add", '{"b": 30, "a": 4}')
    assert (done.returncode, done.stdout) == (0, "34\n"), done.stderr
    done = callrt("call", worker, "tests.Lab.nothing")
    assert (done.returncode, done.stdout) == (0, "null\n"), done.stderr


@pytest.mark.parametrize(("maybe", "either"), [(None, 5), (7, "five")])
def test_types_round_trip_through_json(worker: str, maybe: int | None, either: int | str) -> None:
    """The JSON of a Struct of every type goes in (bytes as base64) and comes back equal."""
    bag = sample_bag(maybe, either)
    done = callrt("call", worker, "tests.Lab.bag", b"[" + msgspec.json.encode(bag) + b"]")
    assert done.returncode == 0, done.stderr
    assert msgspec.json.decode(done.stdout, type=Bag) == bag
    assert msgspec.json.decode(done.stdout)["b"] == msgspec.json.decode(msgspec.json.encode(bag))["b"]

    echo = callrt("call", worker, "tests.Echo.echo", '{"data": "AAEC/w=="}')  # bytes as base64, both ways
    assert (echo.returncode, echo.stdout) == (0, '"AAEC/w=="\n'), echo.stderr


def test_mixed_arguments_by_name(worker: str) -> None:
    args = {
        "point": {"x": 1, "y": 2},
        "color": "red",
        "when": "2024-02-29T23:59:58.123456Z",
        "uid": "12345678-1234-5678-1234-567812345678",
        "amount": "19.99",
        "maybe": None,
        "either": "x",
        "items": [{"sku": "s", "qty": 1, "price": "0.5"}],
        "by_name": {"p": {"x": 0, "y": 0}},
    }
    done = callrt("call", worker, "tests.Lab.mixed", msgspec.json.encode(args).decode())
    assert done.returncode == 0, done.stderr
    mixed = msgspec.json.decode(done.stdout, type=Mixed)
    assert mixed.point == Point(1, 2)
    assert mixed.color is Color.RED
    assert mixed.items[0] == Item("s", 1, Decimal("0.5"))


def test_errors_have_codes_messages_tracebacks_and_exit_codes(worker: str) -> None:
    done = callrt("call", worker, "tests.Lab.fail", '["boom"]')
    assert done.returncode == 1
    assert "error: unknown: boom" in done.stderr
    assert "ValueError" in done.stderr
    assert "Traceback (most recent call last)" in done.stderr  # sent to a caller on the same machine
    assert done.stdout == ""

    done = callrt("call", worker, "tests.Lab.add", '["x", 1]')
    assert done.returncode == 1
    assert "invalid_argument" in done.stderr
    assert "'a'" in done.stderr

    done = callrt("call", worker, "tests.Lab.nope", "[]")
    assert done.returncode == 2
    assert "does not serve tests.Lab.nope" in done.stderr
    assert "add" in done.stderr

    done = callrt("call", worker, "tests.Lab.add", "[1, ")
    assert done.returncode == 2
    assert "not JSON" in done.stderr

    done = callrt("call", worker, "tests.Lab.add", "[1]")
    assert done.returncode == 2
    assert "missing 'b'" in done.stderr


def test_health(worker: str) -> None:
    done = callrt("health", worker)
    assert (done.returncode, done.stdout) == (0, "SERVING\n"), done.stderr
    done = callrt("health", worker, "tests.Lab")
    assert (done.returncode, done.stdout) == (0, "SERVING\n"), done.stderr
    done = callrt("health", worker, "tests.Nothing")
    assert (done.returncode, done.stdout) == (1, "SERVICE_UNKNOWN\n"), done.stderr


def test_unreachable_is_an_error() -> None:
    dead = dead_tcp_endpoint()
    for args in (("health", dead), ("call", dead, "tests.Lab.add", "[1, 2]"), ("list", dead)):
        done = callrt("--timeout", "1", *args)
        assert done.returncode == 1, args
        assert done.stderr.startswith("error: "), done.stderr
        assert "connection refused" in done.stderr, done.stderr


def test_without_reflection_the_array_is_sent_as_it_is() -> None:
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.components:Lab"], options={"reflection": False}) as w:
        url = str(w.endpoint)
        done = callrt("call", url, "tests.Lab.add", "[20, 22]")
        assert (done.returncode, done.stdout) == (0, "42\n"), done.stderr
        done = callrt("list", url)
        assert done.returncode == 1
        assert "does not answer callrt.Reflection" in done.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_calls_and_drains_on_sigterm(tmp_path: Path, backend: str) -> None:
    sock = tmp_path / "s.sock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "callrt", "--backend", backend, "serve", "tests.components:Lab"]
    cmd += ["tests.components:Echo", "--listen", f"unix://{sock}", "--listen", "tcp://127.0.0.1:0"]
    with serving(cmd, ROOT, env, 1) as (line,):
        assert line.startswith("serving on unix://"), line
        tcp = line.strip().split(", ")[1]
        for url in (f"unix://{sock}", tcp):
            done = callrt("call", url, "tests.Lab.add", "[1, 2]")
            assert (done.returncode, done.stdout) == (0, "3\n"), done.stderr
        done = callrt("health", tcp, "tests.Echo")
        assert (done.returncode, done.stdout) == (0, "SERVING\n"), done.stderr


def test_usage_errors() -> None:
    done = callrt("serve", "tests.components:Nope", "--listen", "tcp://127.0.0.1:0")
    assert done.returncode == 2
    assert "cannot load tests.components:Nope" in done.stderr
    done = callrt("call", "tcp://127.0.0.1:1", "nodot", "[]")
    assert done.returncode == 2
    done = callrt("--help")
    assert done.returncode == 0
    assert "serve" in done.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_workers_share_a_port_and_drain_on_sigterm(backend: str) -> None:
    """``--workers 2``: two processes on one TCP port (SO_REUSEPORT); new connections reach both; SIGTERM drains both."""
    url = dead_tcp_endpoint()  # a free port, given explicitly: port 0 would differ per worker
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "callrt", "--backend", backend, "serve", "tests.components:Lab"]
    cmd += ["--listen", url, "--workers", "2"]
    with serving(cmd, ROOT, env, 2) as lines:
        assert lines == [f"serving on {url}"] * 2

        async def pids() -> set[int]:
            seen: set[int] = set()
            with anyio.fail_after(20):
                for _ in range(64):  # each client its own connection, which the kernel gives one worker
                    async with call.connect(url) as client:
                        seen.add(await client.stub(Lab).pid())
                    if len(seen) == 2:
                        break
            return seen

        assert len(anyio.run(pids)) == 2


def test_serve_workers_need_tcp_ports() -> None:
    done = callrt("serve", "tests.components:Lab", "--listen", "tcp://127.0.0.1:0", "--workers", "2")
    assert done.returncode == 2
    assert "with a port" in done.stderr


def test_a_unix_socket_directory_as_the_target(sockdir: Path) -> None:
    with WorkerProcess(f"unix://{sockdir}/lab.sock", ["tests.components:Lab"]):
        done = callrt("call", f"unixdir://{sockdir}", "tests.Lab.add", "[5, 6]")
        assert (done.returncode, done.stdout) == (0, "11\n"), done.stderr
        done = callrt("health", f"unixdir://{sockdir}", "tests.Lab")
        assert (done.returncode, done.stdout) == (0, "SERVING\n"), done.stderr


@pytest.mark.etcd
@pytest.mark.parametrize(
    "listen",
    [["tcp://127.0.0.1:0"], ["tcp://0.0.0.0:0", "--insecure", "--advertise", "127.0.0.1"]],
    ids=["bound", "advertised"],
)
def test_serve_registers_in_etcd_and_call_finds_it_there(listen: list[str]) -> None:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run scripts/setup-etcd.sh", pytrace=False)
    with running_etcd() as etcd:
        target = f"etcd://{etcd.url.removeprefix('http://')}/callrt-cli/{uuid.uuid4().hex}/"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "callrt", "serve", "tests.components:Lab", "--listen", *listen]
        with serving([*cmd, "--etcd", target], ROOT, env, 1) as (line,):
            assert line.startswith("serving on tcp://"), line
            done = callrt("call", target, "tests.Lab.add", "[7, 8]")
            assert (done.returncode, done.stdout) == (0, "15\n"), done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--advertise", "10.0.0.5"], "--advertise is what --etcd registers: give --etcd too"),
        (["--etcd", "etcd://127.0.0.1:2379/x/", "--advertise", "10.0.0.5:9000"], "without a port"),
    ],
)
def test_serve_checks_advertise(flags: list[str], message: str) -> None:
    done = callrt("serve", "tests.components:Lab", "--listen", "tcp://127.0.0.1:0", *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr
