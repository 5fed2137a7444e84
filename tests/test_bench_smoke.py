"""The benchmark's in-process harness still runs against today's code (its fakes stand in for transports).

``python -m bench.micro`` drives the real client and server protocols through
fake transports; a change to what a protocol asks of its transport breaks it
silently unless something runs it. A few hundred calls per row, timing not judged.
The bench's ``--otel-sdk`` processes are checked for the spans they claim to make.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import Address, free_tcp_port, stop_process, wait_ready
from bench.steps import LatencyStep, encode_steps

ROOT = Path(__file__).resolve().parent.parent


def test_micro_bench_runs_every_row() -> None:
    command = [sys.executable, "-m", "bench.micro", "--calls", "256", "--runs", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and line.endswith(" µs |")]
    assert len(rows) == 11, result.stdout


@pytest.mark.parametrize("system", ["callrt", "grpc"])
def test_otel_sdk_flag_makes_client_and_server_spans(system: str) -> None:
    """``--otel-sdk`` (the otel profile) instruments both processes: each exports a span per call, of its kind.

    For grpc.aio the spans are opentelemetry-instrumentation-grpc's, so this is the check that the
    instrumented baseline measures what it claims to.
    """
    address = Address.tcp("127.0.0.1", free_tcp_port())
    common = [system, "--address", address.url, "--loop", "uvloop", "--otel-sdk"]
    calls = 50
    steps = encode_steps([LatencyStep(payload=32, warmup=0.0, duration=5.0, max_calls=calls)])
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.server", *common], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        assert wait_ready(server, address, timeout=20), "the server did not start"
        client = subprocess.run(
            [sys.executable, "-m", "bench.client", *common, "--server-pid", str(server.pid), "--steps", steps],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr
        server.send_signal(signal.SIGINT)  # unlike SIGTERM, lets the process flush and report at exit
        _, server_err = server.communicate(timeout=20)
    finally:
        stop_process(server)
    for role, kind, err in (("client", "CLIENT", client.stderr), ("server", "SERVER", server_err)):
        lines = [line for line in err.splitlines() if line.startswith(f"otel-sdk {system} {role}:")]
        first = next(line for line in lines if "first export" in line)
        assert f"'{kind}':" in first and "Echo" in first, first
        exported = int(re.search(r": (\d+) spans exported", lines[-1]).group(1))  # type: ignore[union-attr]
        assert exported >= calls, lines  # the warm-up call and the latency step's calls, one span each
