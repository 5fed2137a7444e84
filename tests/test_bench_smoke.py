"""The benchmark's in-process harness still runs against today's code (its fakes stand in for transports).

``python -m bench.micro`` drives the real client and server protocols through
fake transports; a change to what a protocol asks of its transport breaks it
silently unless something runs it. A few hundred calls per row, timing not judged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_micro_bench_runs_every_row() -> None:
    command = [sys.executable, "-m", "bench.micro", "--calls", "256", "--runs", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and line.endswith(" µs |")]
    assert len(rows) == 11, result.stdout
