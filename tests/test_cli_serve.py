"""``callrt serve`` as an operator runs it: the console script from a project directory, and metrics for Prometheus."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pytest

from callrt import call
from tests.components import Lab
from tests.support import serving
from tests.test_integration import dead_tcp_endpoint

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "callrt"  # the console script pip installed beside the venv's python


def test_the_console_script_imports_modules_from_the_current_directory(tmp_path: Path) -> None:
    """``callrt serve mymod:Comp`` in the project's directory, as ``python -m callrt`` or uvicorn would."""
    (tmp_path / "greeting_here.py").write_text(
        "from callrt import component\n\n"
        "@component(name='here.Greeter')\n"
        "class Greeter:\n"
        "    def greet(self, name: str) -> str:\n"
        "        return f'hello {name}'\n"
    )
    assert SCRIPT.exists(), SCRIPT
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing else puts the directory there
    sock = tmp_path / "s.sock"
    cmd = [str(SCRIPT), "serve", "greeting_here:Greeter", "--listen", f"unix://{sock}"]
    with serving(cmd, tmp_path, env, 1) as lines:
        assert lines == [f"serving on unix://{sock}"]
        done = subprocess.run(
            [str(SCRIPT), "call", f"unix://{sock}", "here.Greeter.greet", '["ann"]'],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd=tmp_path,
        )
        assert (done.returncode, done.stdout) == (0, '"hello ann"\n'), done.stderr


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text


def _count(page: str, metric: str, method: str) -> float:
    """The sum of ``metric`` samples whose labels say ``rpc_method="method"``."""
    total = 0.0
    for line in page.splitlines():
        if line.startswith(metric + "{") and f'rpc_method="{method}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _free_ports(n: int) -> int:
    """A port P such that P .. P+n-1 are free now (bound and released: another process may take one later)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            others = [socket.socket() for _ in range(n - 1)]
            try:
                for i, other in enumerate(others, 1):
                    other.bind(("127.0.0.1", base + i))
                return base
            except OSError:
                continue
            finally:
                for other in others:
                    other.close()
    raise AssertionError(f"no {n} consecutive free ports")


@pytest.mark.parametrize(("workers", "port"), [(1, "0"), (2, "0"), (2, "P")], ids=["1-any", "2-any", "2-P+i"])
def test_serve_exposes_metrics_for_prometheus(workers: int, port: str) -> None:
    url = dead_tcp_endpoint()  # a free port, given explicitly (workers share it)
    base = _free_ports(workers) if port == "P" else 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "callrt", "serve", "tests.components:Lab", "--listen", url]
    cmd += ["--metrics-port", str(base), "--workers", str(workers)]
    with serving(cmd, ROOT, env, 2 * workers) as lines:
        pages = [m.group(1) for line in lines if (m := re.fullmatch(r"metrics on (http://\S+/metrics)", line))]
        assert len(pages) == workers, lines  # each worker its own port
        if base:  # worker i on base + i
            assert sorted(pages) == [f"http://127.0.0.1:{base + i}/metrics" for i in range(workers)]
        assert lines.count(f"serving on {url}") == workers, lines

        async def calls() -> None:
            with anyio.fail_after(20):
                for _ in range(3 * workers):  # a connection per client: with two workers, both get some
                    async with call.connect(url) as client:
                        assert await client.stub(Lab).add(2, 3) == 5

        anyio.run(calls)
        scraped = [_scrape(page) for page in pages]
        assert "# TYPE rpc_server_duration_milliseconds histogram" in scraped[0], scraped[0][:2000]
        counts = [_count(page, "rpc_server_duration_milliseconds_count", "add") for page in scraped]
        assert sum(counts) == 3 * workers, counts
        for page in scraped:
            # Labels that say what was called; not the caller's address, a new time series per connection.
            assert "client_address" not in page
        assert 'rpc_service="tests.Lab"' in "".join(scraped)
