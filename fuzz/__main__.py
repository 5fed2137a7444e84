"""``python -m fuzz``: coverage-guided fuzzing of callrt's codec with atheris (libFuzzer).

    python -m fuzz decoder --runs 1000000      # decoder-server, then decoder-client
    python -m fuzz tracestate --runs 1000000
    python -m fuzz all --runs 1000000          # every target
    python -m fuzz decoder-server --runs 5000 --no-record   # one target, results not written
    python -m fuzz coverage                    # the corpora's line/branch coverage (fuzz/replay.py)
    python -m fuzz bench --against OLD.py      # decoder timings (fuzz/bench_decoder.py)

Each target runs in a child process (``fuzz/_atheris.py``) from the seeds of
``fuzz/seeds.py`` plus the corpus grown by earlier runs (``fuzz/corpus/TARGET``,
not committed). libFuzzer's last status line gives the inputs run and the
coverage (``cov``: edges of callrt.protocol/tracing/errors reached; ``ft``:
features); one summary line per run is appended to ``fuzz/results/TARGET.txt``.
A crash leaves its input in ``fuzz/results/crashes/``; the exit status is then 1.
Without atheris, ``--engine hypothesis`` runs the same targets on
Hypothesis-generated inputs (no coverage guidance, no coverage figures).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(os.path.abspath(__file__)).parent  # not resolved: a symlinked checkout runs its own code
ROOT = HERE.parent
TARGET_NAMES = ("decoder-server", "decoder-client", "tracestate", "server-connection")
GROUPS = {"decoder": ("decoder-server", "decoder-client"), "all": TARGET_NAMES}
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?: corp: (\S+))?.*?(?:exec/s: (\d+))?(?: rss: (\S+))?$")


def run_atheris(target: str, runs: int, max_len: int, record: bool, quiet: bool, workdir: Path) -> int:
    corpus = workdir / "corpus" / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = workdir / "results" / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from fuzz.seeds import SEEDS

    for i, seed in enumerate(SEEDS[target]()):
        (corpus / f"seed-{i:02d}").write_bytes(seed)
    cmd = [
        sys.executable,
        "-m",
        "fuzz._atheris",
        target,
        f"-runs={runs}",
        f"-max_len={max_len}",
        "-timeout=20",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/{target}-",
        str(corpus),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    last: tuple[str, ...] = ()
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = [*tail[-40:], line]
            if m := _STATUS.match(line):
                last = tuple(g or "" for g in m.groups())
                if not quiet and m.group(2) in ("INITED", "pulse", "DONE"):
                    print(f"[{target}] {line}", flush=True)
            elif not quiet and not line.startswith(("#", "INFO: Instrumenting")):
                print(f"[{target}] {line}", flush=True)
        status = proc.wait()
    seconds = time.monotonic() - started
    if status != 0 and quiet:
        print("\n".join(tail), file=sys.stderr)
    executed, _, cov, ft, corp, execs, rss = last or ("0", "", "?", "?", "?", "?", "?")
    summary = (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}Z target={target} engine=atheris "
        f"runs={executed} cov={cov} ft={ft} corpus={corp} exec/s={execs} rss={rss} seconds={seconds:.0f} "
        f"exit={status} python={sys.version.split()[0]} cmd={shlex.join(['python', '-m', 'fuzz', target, f'--runs={runs}'])}"
    )
    print(summary, flush=True)
    if record:
        with open(HERE / "results" / f"{target}.txt", "a") as f:
            f.write(summary + "\n")
    return status


def run_hypothesis(target: str, runs: int) -> int:
    """The same target on Hypothesis-generated inputs: for machines without atheris."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fuzz.seeds import SEEDS
    from fuzz.targets import TARGETS

    fn = TARGETS[target]
    seeds = SEEDS[target]()
    inputs = st.binary(max_size=2048) | st.sampled_from(seeds).flatmap(
        lambda seed: st.binary(max_size=64).map(lambda noise: seed[: len(seed) // 2] + noise + seed[len(seed) // 2 :])
    )
    count = 0

    @settings(max_examples=runs, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(inputs)
    def check(data: bytes) -> None:
        nonlocal count
        count += 1
        fn(data)

    started = time.monotonic()
    check()
    print(f"target={target} engine=hypothesis runs={count} seconds={time.monotonic() - started:.1f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from fuzz.bench_decoder import main as bench

        bench(argv[1:])
        return 0
    if argv[:1] == ["coverage"]:
        from fuzz.replay import main as replay

        return replay(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=[*GROUPS, *TARGET_NAMES])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--max-len", type=int, default=8192, help="longest input libFuzzer makes")
    parser.add_argument("--engine", choices=["atheris", "hypothesis"], default="atheris")
    parser.add_argument("--no-record", dest="record", action="store_false", help="do not append to fuzz/results")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line (and a crash's output)")
    parser.add_argument(
        "--workdir", type=Path, default=HERE, help="where corpus/TARGET and results/crashes go (default: fuzz/)"
    )
    args = parser.parse_args(argv)
    worst = 0
    for target in GROUPS.get(args.target, (args.target,)):
        if args.engine == "atheris":
            worst = max(worst, run_atheris(target, args.runs, args.max_len, args.record, args.quiet, args.workdir))
        else:
            worst = max(worst, run_hypothesis(target, args.runs))
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
