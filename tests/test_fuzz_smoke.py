"""A short run of every fuzz target (fuzz/README.md), so the harness and the codec's invariants stay checked in CI.

With atheris installed (the ``fuzz`` extra), each target runs a few thousand
coverage-guided inputs in a subprocess, from the seeds, in a scratch corpus.
The Hypothesis run of the same targets always runs, in process, so the checks
are exercised on machines without atheris too.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.seeds import SEEDS
from fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5000


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris not installed (pip install -e .[fuzz])"
)
def test_atheris_runs_every_target(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fuzz", "all", f"--runs={RUNS}", "--no-record", "--quiet", f"--workdir={tmp_path}"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summaries = dict(re.findall(r"target=(\S+) engine=atheris runs=(\d+)", result.stdout))
    assert summaries == {name: str(RUNS) for name in TARGETS}, result.stdout
    assert "exit=0" in result.stdout and not list((tmp_path / "results" / "crashes").iterdir())


@pytest.mark.parametrize("name", list(TARGETS))
def test_hypothesis_runs_every_target(name: str) -> None:
    target, seeds = TARGETS[name], SEEDS[name]()
    mutated = st.tuples(st.sampled_from(seeds), st.integers(0, 400), st.binary(max_size=16)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
    )

    @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=512) | mutated | st.sampled_from(seeds))
    def run(data: bytes) -> None:
        target(data)

    run()


def test_the_server_connection_target_finds_what_it_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server-connection harness (fuzz/connection.py) on bugs planted in the connection logic:
    a reply sent twice, and an exception other than a protocol error escaping."""
    from callrt.connection.server import ServerConnection
    from fuzz.connection import server_connection, server_connection_seeds

    seed = server_connection_seeds()[0]
    server_connection(seed)  # clean as it is
    reply = ServerConnection.reply

    def twice(self: ServerConnection, request_id: int, payload: bytes, accept: int = 0) -> None:
        reply(self, request_id, payload, accept)
        reply(self, request_id, payload, accept)

    with monkeypatch.context() as patched:
        patched.setattr(ServerConnection, "reply", twice)
        with pytest.raises(AssertionError, match=r"request 1: 2 replies to 1 requests"):
            server_connection(seed)

    def broken(self: ServerConnection, frame: object) -> None:
        raise KeyError(frame)

    with monkeypatch.context() as patched:
        patched.setattr(ServerConnection, "frame_received", broken)
        with pytest.raises(AssertionError, match="KeyError escaped the connection"):
            server_connection(seed)
