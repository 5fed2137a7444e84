"""The stream bench still runs against today's code: ``python -m bench.streams --quick``, callrt (and grpc if installed).

Real server and client processes over TCP, a fraction of a second per job;
the figures are not judged, only that each job printed one.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stream_bench_quick_runs(tmp_path: Path) -> None:
    systems = "callrt,grpc" if importlib.util.find_spec("grpc") is not None else "callrt"
    out = tmp_path / "streams.json"
    command = [sys.executable, "-m", "bench.streams", "--quick", "--systems", systems, "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| callrt | 1 stream, 32 B |" in result.stdout, result.stdout
    assert "| callrt ÷ callrt-unary |" in result.stdout, result.stdout
    document = json.loads(out.read_text())
    cells = document["cells"]
    assert cells["callrt"]["items_per_s"] > 0
    assert cells["callrt-unary"]["items_per_s"] > 0
    if systems.endswith("grpc"):
        assert cells["grpc"]["items_per_s"] > 0
    memory = document["memory"]
    assert memory, result.stdout
    for run in memory:
        assert "error" not in run, run
        assert run["consumed"] > 0
        # The window bounds what the producer got ahead of the consumer (sampled once a second).
        window = int(run["label"].removeprefix("callrt-w").split()[0])
        assert run["max_ahead"] <= window, run
