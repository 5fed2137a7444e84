"""The orchestrator: ``python -m bench`` (or ``python bench/run.py``).

For every job (a variant on a transport and loop) and every repetition it
starts a server process, waits until it accepts connections, runs a client
process that performs the job's steps and prints JSON lines, then stops both.
Repetitions are interleaved (every job once, then every job again) so slow
drifts of a noisy machine spread over all systems. Medians, tables and ratios
come from :mod:`bench.report`; results go to ``bench/results/<profile>.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as ``python bench/run.py``: import the package, not its files
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import IO, Any

from bench import report
from bench.common import LOOPS, PINS, Address, Loop, Processes, free_tcp_port, wait_ready
from bench.profiles import PROFILES, TLS_DIR, Job, Profile, Variant, parse_variant
from bench.steps import MemoryStep, encode_steps, step_to_dict
from bench.systems import MODULES, load

__all__ = ("main",)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
_READY_TIMEOUT = 20.0
_START_COST = 1.5  # seconds of process start-up per job, for the estimate
_CLIENT_GRACE = 60.0  # plus 20 s per step (a client gives up on a step after 15 s)


class Runner:
    """Runs jobs as process pairs; every process it starts is stopped by :meth:`close`."""

    def __init__(self, workdir: Path, verbose: bool, pin: str) -> None:
        self._workdir = workdir
        self._pin = pin
        self._count = 0
        self._processes = Processes(REPO, verbose, grace=3)

    def run(self, job: Job, rep: int) -> list[report.Record]:
        self._count += 1
        address = self._address(job)
        log_path = self._workdir / f"{self._count}-{job.variant.label}.log"
        with open(log_path, "w+") as log:
            lines, failure = self._run_pair(job, address, log)
            log.seek(0)
            text = log.read()
            log_tail = text[-2000:]
        # bench/otel.py's word that the instrumentation made spans (--otel-sdk), shown with the run.
        for line in text.splitlines():
            if line.startswith("otel-sdk "):
                print("    " + line[:300], file=sys.stderr)
        records = [report.Record.from_line(job, rep, line) for line in lines]
        done = [record.step for record in records]
        records += (
            report.Record.of(job, rep, step, error=failure or "no result")
            for step in map(step_to_dict, job.steps)
            if step not in done
        )
        if any(record.error for record in records) and log_tail.strip():
            print(f"    log ({log_path}):\n" + _indent(log_tail), file=sys.stderr)
        return records

    def _address(self, job: Job) -> Address:
        if job.transport == "unix":
            return Address.unix(str(self._workdir / f"{self._count}.sock"))
        return Address.tcp("127.0.0.1", free_tcp_port())

    def _run_pair(self, job: Job, address: Address, log: IO[str]) -> tuple[list[str], str | None]:
        command = self._command("bench.server", job, address)
        with self._processes.start(command, log, cpus=PINS[self._pin][0]) as server:
            if not wait_ready(server, address, _READY_TIMEOUT):
                return [], f"server did not accept connections within {_READY_TIMEOUT:.0f}s"
            extra = ("--server-pid", str(server.pid), "--steps", encode_steps(list(job.steps)))
            command = self._command("bench.client", job, address, *extra)
            cpus = PINS[self._pin][1]
            with self._processes.start(command, log, cpus=cpus, stdout=subprocess.PIPE) as client:
                timeout = job.budget + _CLIENT_GRACE + 20 * len(job.steps)
                try:
                    out, _ = client.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    return [], f"client still running after {timeout:.0f}s"
                lines = [line for line in out.splitlines() if line.startswith("{")]
                if client.returncode != 0:
                    return lines, f"client exited with status {client.returncode}"
                return lines, None

    def _command(self, module: str, job: Job, address: Address, *extra: str) -> list[str]:
        variant = job.variant
        return [
            sys.executable, "-m", module, variant.system,
            "--address", address.url, "--loop", job.loop, *extra, *variant.argv,
        ]  # fmt: skip

    def close(self) -> None:
        self._processes.close()


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.rstrip().splitlines())


def _csv(kind: Callable[[str], Any] = str) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for comma-separated values."""
    return lambda text: tuple(kind(item) for item in text.split(",") if item)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure callrt against a raw framed echo and grpc.aio (see bench/README.md).",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--repeat", "-r", type=int, default=3, help="runs per cell (median kept)")
    parser.add_argument("--systems", type=_csv(), help="default variants to run (default: all), e.g. raw,callrt")
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        default=[],
        metavar="LABEL=SYSTEM[:FLAGS]",
        help="add a variant, e.g. 'callrt-task=callrt:--inline-handler-duration=-1'",
    )
    parser.add_argument("--transports", type=_csv(), help="override: tcp,unix")
    parser.add_argument("--loops", type=_csv(), help=f"override, any of {','.join(LOOPS)}")
    parser.add_argument("--payloads", type=_csv(int), help="override, in bytes: 32,4096")
    parser.add_argument("--many-connections", action="store_true", help="add 64 connections × 16 in flight")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, help="measure server memory")
    parser.add_argument(
        "--pin",
        choices=sorted(PINS),
        default="none",
        help="CPU placement: none (default; the scheduler decides), same (both on CPU 0), "
        "split (server CPU 0, client CPU 1)",
    )
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/<profile>.json)")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def _profile(args: argparse.Namespace) -> Profile:
    profile = PROFILES[args.profile]
    changes: dict[str, Any] = {}
    if args.transports:
        changes["transports"] = args.transports
        changes["memory_transports"] = args.transports[:1]
    if args.payloads:
        changes["payloads"] = args.payloads
    if args.loops:
        loops: tuple[Loop, ...] = args.loops
        changes["loops"] = dict.fromkeys(MODULES, loops)
    if args.many_connections and (64, 16) not in profile.throughput:
        changes["throughput"] = (*profile.throughput, (64, 16))
    if args.memory is not None:
        changes["memory"] = PROFILES["full"].memory if args.memory else None
    return dataclasses.replace(profile, **changes)


def _variants(args: argparse.Namespace, profile: Profile) -> tuple[Variant, ...]:
    """The profile's variants named by ``--systems`` (all without it), then every ``--variant``."""
    chosen = [v for v in profile.variants if not args.systems or v.label in args.systems]
    return (*chosen, *args.variant)


def _with_certificates(variants: tuple[Variant, ...], directory: Path) -> tuple[Variant, ...]:
    """``TLS_DIR`` in the variants' flags becomes ``directory``, with certificates made in it if any asks."""
    if not any(TLS_DIR in v.argv for v in variants):
        return variants
    from bench.tls import make_certs

    make_certs(directory)
    return tuple(
        dataclasses.replace(v, argv=tuple(str(directory) if a == TLS_DIR else a for a in v.argv)) for v in variants
    )


def _available(
    variants: Sequence[Variant],
) -> tuple[tuple[Variant, ...], dict[str, tuple[Loop, ...]], list[str]]:
    """The variants whose system imports, each system's loops, and why others were skipped."""
    usable: list[Variant] = []
    loops_of: dict[str, tuple[Loop, ...]] = {}
    skipped: list[str] = []
    for variant in variants:
        try:
            loops_of[variant.system] = load(variant.system).loops
        except (ImportError, KeyError) as exc:
            skipped.append(f"{variant.label}: unavailable ({type(exc).__name__}: {exc})")
            continue
        usable.append(variant)
    return tuple(usable), loops_of, skipped


def _environment() -> dict[str, str]:
    versions = {name: metadata.version(name) for name in ("anyio", "uvloop", "trio", "grpcio")}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        **versions,
    }


def _progress(index: int, total: int, job: Job, rep: int, records: list[report.Record], took: float) -> None:
    kind = "memory" if isinstance(job.steps[0], MemoryStep) else "perf"
    summary = report.one_line(records)
    print(
        f"[{index}/{total}] rep {rep + 1} {job.variant.label:<14} {job.transport:<4} "
        f"{job.loop:<7} {kind:<6} {took:5.1f}s  {summary}",
        flush=True,
    )


def _run_all(jobs: list[Job], args: argparse.Namespace) -> list[report.Record]:
    """Every job ``args.repeat`` times, interleaved; Ctrl-C keeps what was measured."""
    records: list[report.Record] = []
    total = len(jobs) * args.repeat
    with tempfile.TemporaryDirectory(prefix="callrt-bench-") as workdir:
        runner = Runner(Path(workdir), args.verbose, args.pin)
        try:
            for rep in range(args.repeat):
                for index, job in enumerate(jobs, start=rep * len(jobs) + 1):
                    begun = time.monotonic()
                    job_records = runner.run(job, rep)
                    records += job_records
                    _progress(index, total, job, rep, job_records, time.monotonic() - begun)
        except KeyboardInterrupt:
            print("interrupted: reporting what was measured", file=sys.stderr)
        finally:
            runner.close()
    return records


def _write(out: Path, cells: list[report.Cell], args: argparse.Namespace, **facts: Any) -> None:
    document = {
        "argv": sys.argv[1:],
        "repeat": args.repeat,
        "pin": args.pin,
        **facts,
        "environment": _environment(),
        "cells": [cell.to_dict() for cell in cells],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    profile = _profile(args)
    with tempfile.TemporaryDirectory(prefix="callrt-bench-tls-") as certificates:
        return _main(args, profile, _with_certificates(_variants(args, profile), Path(certificates)))


def _main(args: argparse.Namespace, profile: Profile, wanted: tuple[Variant, ...]) -> int:
    variants, loops_of, notes = _available(wanted)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    jobs = profile.jobs(variants, loops_of)
    if not jobs:
        print("nothing to run", file=sys.stderr)
        return 2
    estimate = args.repeat * sum(job.budget + _START_COST for job in jobs)
    print(f"profile {profile.name}: {len(jobs)} jobs × {args.repeat} runs, ~{estimate / 60:.1f} min")
    started = time.time()
    cells = report.aggregate(_run_all(jobs, args))
    print("\n" + report.render(cells, profile.name))
    _write(
        args.out or RESULTS / f"{profile.name}.json",
        cells,
        args,
        profile=dataclasses.asdict(profile),
        variants=[dataclasses.asdict(v) for v in variants],
        skipped=notes,
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        seconds=round(time.time() - started, 1),
    )
    return 1 if any(cell.errors for cell in cells) else 0


if __name__ == "__main__":
    raise SystemExit(main())
