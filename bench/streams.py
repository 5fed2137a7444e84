"""Stream figures (issue 14): ``python -m bench.streams [--repeat N] [--quick]``.

Measures, each side in its own process, over TCP on uvloop:

* **throughput** of server streams of 32-byte items: items/s of callrt's
  streams (1 and 4 concurrent streams on one connection; windows 16, 64,
  256, 1,024 and 4,096 items) against callrt's own unary echo with 64 callers
  (``K=64``, the same server), grpc.aio unary-stream calls (1 and 4 on one
  channel) and a raw framed stream on an ``asyncio.Protocol`` (1 and 4
  connections; one write per frame, and 64 frames per write), with the CPU
  time each process spent per item;
* **memory** of a callrt stream whose consumer takes 1 KiB items 1,000× slower
  than the producer's rate (measured in the same run, fast consumer, 1 KiB
  items): the RSS of both processes every second, with windows of 16 and 256
  items, and what the producer handed to its connection against what the
  consumer took.

Every job runs ``--repeat`` times with a fresh server and client process;
repetitions are interleaved (every job once, then again) and tables show
medians, with ``±`` the spread ``(max − min) / median``. The 1-minute load
average is recorded before every job (other work on the machine shows there).
Results go to ``bench/results/streams.json`` (``--out``). ``--quick`` is a
smoke test (~20 s): one run, short intervals, a 3 s memory job.

The two process roles are this module too: ``python -m bench.streams _serve
SYSTEM --address URL [flags]`` and ``... _client SYSTEM --address URL
--server-pid PID --task JSON [flags]`` (the client prints one JSON line).
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from time import perf_counter
from typing import IO, Any

import anyio

from bench import measure
from bench.common import (
    LOOPS,
    PINS,
    Address,
    Processes,
    free_tcp_port,
    read_rss_kib,
    run_on_loop,
    wait_ready,
)
from bench.systems import Client
from bench.systems.streams_base import STREAM_MODULES, StreamClient, StreamSystem, Tally, load_stream_system

__all__ = ("main",)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "streams.json"
_READY_TIMEOUT = 20.0
_SAMPLE_PERIOD = 0.02  # seconds between placement samples under load
_SLOWDOWN = 1000  # the memory figure's consumer is this much slower than the producer
# --pin: CPUs of (server, client), as in bench.run; None leaves placement to the scheduler.

Result = dict[str, Any]


# -- jobs --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One measurement: a system with its flags, and the task its client process performs."""

    label: str
    system: str
    argv: tuple[str, ...]
    task: dict[str, Any]

    @property
    def budget(self) -> float:
        task = self.task
        return float(task.get("warmup", 0) + task["duration"])


def _stream(label: str, system: str, *argv: str, streams: int = 1, size: int = 32, timing: tuple[float, float]) -> Job:
    warmup, duration = timing
    task = {"kind": "stream", "size": size, "streams": streams, "warmup": warmup, "duration": duration}
    return Job(label, system, argv, task)


def _throughput_jobs(systems: Sequence[str], quick: bool) -> list[Job]:
    timing = (0.2, 0.6) if quick else (0.5, 2.0)
    jobs: list[Job] = []
    if "callrt" in systems:
        jobs += [
            _stream("callrt", "callrt", timing=timing),
            Job(
                "callrt-unary",
                "callrt",
                (),
                {"kind": "unary", "size": 32, "inflight": 64, "warmup": timing[0], "duration": timing[1]},
            ),
        ]
        if not quick:
            jobs += [
                _stream("callrt-w16", "callrt", "--window=16", timing=timing),
                _stream("callrt-w64", "callrt", "--window=64", timing=timing),
                _stream("callrt-w1024", "callrt", "--window=1024", timing=timing),
                _stream("callrt-w4096", "callrt", "--window=4096", timing=timing),
                _stream("callrt ×4", "callrt", streams=4, timing=timing),
                _stream("callrt-w1024 ×4", "callrt", "--window=1024", streams=4, timing=timing),
                _stream("callrt 1KiB", "callrt", size=1024, timing=timing),
            ]
    if "grpc" in systems:
        jobs.append(_stream("grpc", "grpc", timing=timing))
        if not quick:
            jobs.append(_stream("grpc ×4", "grpc", streams=4, timing=timing))
    if "raw" in systems:
        jobs.append(_stream("raw", "raw", timing=timing))
        if not quick:
            jobs += [
                _stream("raw ×4", "raw", streams=4, timing=timing),
                _stream("raw-batched", "raw", "--batch=64", timing=timing),
                _stream("raw-batched ×4", "raw", "--batch=64", streams=4, timing=timing),
            ]
    return jobs


def _memory_jobs(interval: float, quick: bool, windows: Sequence[int]) -> list[Job]:
    duration = 3.0 if quick else 20.0
    return [
        Job(
            f"callrt-w{window} slow",
            "callrt",
            (f"--window={window}",),
            {"kind": "slow", "size": 1024, "interval": interval, "duration": duration, "probe": 0.1, "sample": 1.0},
        )
        for window in windows
    ]


# -- the client process's tasks ---------------------------------------------------------------------


async def _stream_task(client: StreamClient, server_pid: int, task: dict[str, Any]) -> Result:
    tally = Tally()
    placement = measure.Placement(server_pid)
    size, streams = int(task["size"]), int(task["streams"])
    async with anyio.create_task_group() as group:
        for _ in range(streams):
            group.start_soon(client.run, size, tally)
        await anyio.sleep(task["warmup"])
        if tally.n == 0:
            raise RuntimeError(f"no item received after the {task['warmup']}s warm-up")
        start, first = perf_counter(), tally.n
        cpu_start = placement.cpu_seconds()
        stop_at = start + task["duration"]
        while perf_counter() < stop_at:
            placement.sample()
            await anyio.sleep(_SAMPLE_PERIOD)
        elapsed, items = perf_counter() - start, tally.n - first
        cpu = [end - begin for begin, end in zip(cpu_start, placement.cpu_seconds(), strict=True)]
        group.cancel_scope.cancel()
    return {
        "items": items,
        "items_per_s": items / elapsed,
        "bytes_per_s": items / elapsed * size,
        "same_cpu": placement.same_cpu,
        "client_cpu_us": cpu[0] / items * 1e6 if items else None,
        "server_cpu_us": cpu[1] / items * 1e6 if items else None,
    }


async def _unary_task(client: StreamClient, server_pid: int, task: dict[str, Any]) -> Result:
    if client.call is None:
        raise RuntimeError("this system has no unary echo")
    result = await measure.throughput(
        [Client(call=client.call)],
        b"u" * int(task["size"]),
        measure.Placement(server_pid),
        inflight=int(task["inflight"]),
        warmup=task["warmup"],
        duration=task["duration"],
    )
    result["items_per_s"] = result["calls_per_s"]  # one reply is the unit the stream is compared with
    return result


async def _slow_task(client: StreamClient, server_pid: int, task: dict[str, Any]) -> Result:
    """A consumer taking one item per ``interval``; the counts and RSS of both sides every ``probe`` s.

    ``samples`` holds every probe; ``server_rss_kib`` and ``client_rss_kib`` one every ``sample``
    seconds (the first before the stream opens, the last after it closed). The probes are kept
    in arrays allocated up front, so the client's RSS does not grow with its own record.
    """
    if client.items is None or client.produced is None:
        raise RuntimeError("this system has no paced stream")
    produced = client.produced
    size, interval, duration = int(task["size"]), float(task["interval"]), float(task["duration"])
    probe = float(task["probe"])
    me = os.getpid()
    consumed = 0
    capacity = int(duration / probe) + 64
    columns = ("t_ms", "produced", "consumed", "server_rss_kib", "client_rss_kib")
    record = {name: array.array("q", bytes(8 * capacity)) for name in columns}
    count = 0
    start = perf_counter()

    async def sample() -> None:
        nonlocal count
        # The producer's count first: the consumer's, read after its reply, is at least what the
        # server had seen taken when it answered, so ``produced - consumed`` never overstates the gap.
        ahead_of = await produced()
        if count < capacity:
            record["t_ms"][count] = int((perf_counter() - start) * 1000)
            record["produced"][count] = ahead_of
            record["consumed"][count] = consumed
            record["server_rss_kib"][count] = read_rss_kib(server_pid)
            record["client_rss_kib"][count] = read_rss_kib(me)
            count += 1

    async def sampler() -> None:
        tick = 0
        while True:  # on the ticks of a clock started with the stream: one probe per period
            tick += 1
            await anyio.sleep(max(0.0, start + tick * probe - perf_counter()))
            await sample()

    await sample()  # t=0: before the stream opens
    items = client.items(size)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(sampler)
            stop_at = start + duration
            next_at = perf_counter()
            async for item in items:
                if len(item) != size:
                    raise RuntimeError(f"an item of {len(item)} bytes, not {size}")
                consumed += 1
                next_at += interval
                if next_at >= stop_at:
                    break
                await anyio.sleep(max(0.0, next_at - perf_counter()))
            group.cancel_scope.cancel()
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    count = min(count, capacity - 1)
    await sample()  # after the stream closed
    kept = {name: column[:count].tolist() for name, column in record.items()}
    every = max(1, round(float(task["sample"]) / probe))
    shown = [*range(0, count - 1, every), count - 1]
    return {
        "consumed": consumed,
        "elapsed_s": perf_counter() - start,
        "samples": kept,
        "max_ahead": max(p - c for p, c in zip(kept["produced"], kept["consumed"], strict=True)),
        "server_max_rss_kib": max(kept["server_rss_kib"]),
        "client_max_rss_kib": max(kept["client_rss_kib"]),
        "server_rss_kib": [kept["server_rss_kib"][i] for i in shown],
        "client_rss_kib": [kept["client_rss_kib"][i] for i in shown],
    }


_TASKS = {"stream": _stream_task, "unary": _unary_task, "slow": _slow_task}


def _role_parser(role: str, system: StreamSystem) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m bench.streams {role}")
    parser.add_argument("system", choices=sorted(STREAM_MODULES))
    parser.add_argument("--address", required=True, type=Address)
    parser.add_argument("--loop", choices=LOOPS, default="uvloop")
    parser.add_argument("--cprofile", type=Path, help="run this process under cProfile, stats written to PATH")
    if role == "_client":
        parser.add_argument("--server-pid", required=True, type=int)
        parser.add_argument("--task", required=True, type=json.loads)
    system.add_arguments(parser)
    return parser


def _role(role: str, argv: list[str]) -> int:
    system = load_stream_system(argv[0])
    args = _role_parser(role, system).parse_args(argv)

    async def serve() -> None:
        await system.serve(args.address, args)

    async def client() -> None:
        task = args.task
        line: dict[str, Any] = {"task": task}
        try:
            with anyio.fail_after(float(task.get("warmup", 0)) + float(task["duration"]) + 30):
                async with system.connect(args.address, args) as connected:
                    line["result"] = await _TASKS[task["kind"]](connected, args.server_pid, task)
        except Exception as exc:
            line["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(line), flush=True)

    main = serve if role == "_serve" else client
    if args.cprofile is None:
        run_on_loop(main, args.loop)
        return 0
    import cProfile

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # the orchestrator terminates the server: stats are still written
    profile = cProfile.Profile()
    try:
        profile.runcall(run_on_loop, main, args.loop)
    except KeyboardInterrupt:
        pass
    finally:
        profile.dump_stats(args.cprofile)
    return 0


# -- the orchestrator -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    job: Job
    rep: int
    load1: float
    result: Result | None = None
    error: str | None = None


@dataclass(slots=True)
class Runner:
    workdir: Path
    verbose: bool
    pin: str = "none"
    cprofile: Path | None = None
    count: int = 0
    processes: Processes = field(init=False)

    def __post_init__(self) -> None:
        self.processes = Processes(REPO, self.verbose)

    def run(self, job: Job, rep: int) -> Run:
        self.count += 1
        record = Run(job, rep, os.getloadavg()[0])
        address = Address.tcp("127.0.0.1", free_tcp_port())
        log_path = self.workdir / f"{self.count}.log"
        with open(log_path, "w+") as log:
            line, failure = self._pair(job, address, log)
            log.seek(0)
            tail = log.read()[-2000:]
        if line is not None:
            record.result, record.error = line.get("result"), line.get("error")
        if failure and not record.error:
            record.error = failure
        if record.error and tail.strip():
            print("    log:\n" + "\n".join("      " + s for s in tail.rstrip().splitlines()), file=sys.stderr)
        return record

    def _pair(self, job: Job, address: Address, log: IO[str]) -> tuple[dict[str, Any] | None, str | None]:
        common = [job.system, "--address", address.url, *job.argv]
        server_cpus, client_cpus = PINS[self.pin]
        with self.processes.start(self._command("_serve", job, common), log, server_cpus) as server:
            if not wait_ready(server, address, _READY_TIMEOUT):
                return None, f"server did not accept connections within {_READY_TIMEOUT:.0f}s"
            extra = ["--server-pid", str(server.pid), "--task", json.dumps(job.task)]
            command = self._command("_client", job, [*common, *extra])
            with self.processes.start(command, log, client_cpus, stdout=subprocess.PIPE) as client:
                timeout = job.budget + 60
                try:
                    out, _ = client.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    return None, f"client still running after {timeout:.0f}s"
                lines = [json.loads(s) for s in out.splitlines() if s.startswith("{")]
                if not lines:
                    return None, f"client printed no result (status {client.returncode})"
                return lines[-1], None

    def _command(self, role: str, job: Job, argv: list[str]) -> list[str]:
        command = [sys.executable, "-m", "bench.streams", role, *argv]
        if self.cprofile is None:
            return command
        self.cprofile.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() else "-" for c in job.label)
        return [*command, "--cprofile", str(self.cprofile / f"{name}.{role.strip('_')}.{self.count}.prof")]

    def close(self) -> None:
        self.processes.close()


def _rounds(runner: Runner, jobs: list[Job], repeat: int, runs: list[Run]) -> None:
    total = len(jobs) * repeat
    for rep in range(repeat):
        for index, job in enumerate(jobs, start=rep * len(jobs) + 1):
            begun = time.monotonic()
            run = runner.run(job, rep)
            runs.append(run)
            print(
                f"[{index}/{total}] rep {rep + 1} {job.label:<18} load {run.load1:4.2f} "
                f"{time.monotonic() - begun:5.1f}s  {_one_line(run)}",
                flush=True,
            )


def _one_line(run: Run) -> str:
    if run.error:
        return f"ERROR {run.error}"
    result = run.result or {}
    if run.job.task["kind"] == "slow":
        return (
            f"{result['consumed']} taken, at most {result['max_ahead']} ahead, server RSS max "
            f"{result['server_max_rss_kib'] / 1024:.1f} MiB, client {result['client_max_rss_kib'] / 1024:.1f} MiB"
        )
    cpu = ""
    if result.get("client_cpu_us") is not None:
        cpu = f"  cpu µs/item {result['client_cpu_us']:.2f} + {result['server_cpu_us']:.2f}"
    return f"{result['items_per_s']:,.0f}/s{cpu}"


# -- report ----------------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else None


def _values(runs: Sequence[Run], label: str, metric: str) -> list[float]:
    return [
        float(r.result[metric])
        for r in runs
        if r.job.label == label and r.result is not None and r.result.get(metric) is not None
    ]


def _summary(runs: Sequence[Run], jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if job.task["kind"] == "slow":
            continue
        rates = _values(runs, job.label, "items_per_s")
        cells[job.label] = {
            "system": job.system,
            "argv": list(job.argv),
            "task": job.task,
            "runs": len(rates),
            "items_per_s": _median(rates),
            "items_per_s_runs": rates,
            "spread": _spread(rates),
            "client_cpu_us": _median(_values(runs, job.label, "client_cpu_us")),
            "server_cpu_us": _median(_values(runs, job.label, "server_cpu_us")),
            "same_cpu": _median(_values(runs, job.label, "same_cpu")),
            "errors": [r.error for r in runs if r.job.label == job.label and r.error],
        }
    return cells


# (stream label, baseline label, goal or None)
_RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("callrt", "callrt-unary", 2.0),
    ("callrt", "grpc", 20.0),
    ("callrt", "raw", None),
    ("callrt", "raw-batched", None),
    ("callrt ×4", "callrt-unary", 2.0),
    ("callrt ×4", "grpc ×4", 20.0),
    ("callrt ×4", "raw ×4", None),
    ("callrt ×4", "raw-batched ×4", None),
)


def _ratios(runs: Sequence[Run], cells: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios of medians, and the range of the ratios within each round (same round, adjacent in time)."""
    out: list[dict[str, Any]] = []
    for label, base, goal in _RATIOS:
        if label not in cells or base not in cells:
            continue
        top, bottom = cells[label]["items_per_s"], cells[base]["items_per_s"]
        if not top or not bottom:
            continue
        by_rep: dict[int, dict[str, float]] = {}
        for r in runs:
            if r.result is not None and r.job.label in (label, base) and "items_per_s" in r.result:
                by_rep.setdefault(r.rep, {})[r.job.label] = r.result["items_per_s"]
        per_round = [v[label] / v[base] for v in by_rep.values() if label in v and base in v]
        cpu = [cells[x]["client_cpu_us"] is not None and cells[x]["server_cpu_us"] is not None for x in (label, base)]
        cpu_ratio = None
        if all(cpu):
            spent = cells[label]["client_cpu_us"] + cells[label]["server_cpu_us"]
            cpu_ratio = (cells[base]["client_cpu_us"] + cells[base]["server_cpu_us"]) / spent
        out.append(
            {
                "stream": label,
                "baseline": base,
                "ratio": top / bottom,
                "round_min": min(per_round) if per_round else None,
                "round_max": max(per_round) if per_round else None,
                "cpu_ratio": cpu_ratio,
                "goal": goal,
            }
        )
    return out


def _memory_summary(runs: Sequence[Run], producer_rate: float | None, size: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in runs:
        if r.job.task["kind"] != "slow":
            continue
        row: dict[str, Any] = {"label": r.job.label, "rep": r.rep, "interval_s": r.job.task["interval"]}
        if r.result is None:
            row["error"] = r.error
            out.append(row)
            continue
        res = r.result
        duration = float(res["elapsed_s"])
        row |= {
            "consumed": res["consumed"],
            "max_ahead": res["max_ahead"],
            "server_rss_kib": res["server_rss_kib"],
            "client_rss_kib": res["client_rss_kib"],
            "server_max_rss_kib": res["server_max_rss_kib"],
            "client_max_rss_kib": res["client_max_rss_kib"],
            "server_growth_kib": res["server_max_rss_kib"] - res["server_rss_kib"][0],
            "client_growth_kib": res["client_max_rss_kib"] - res["client_rss_kib"][0],
        }
        if producer_rate:
            backlog = max(0.0, producer_rate * duration - res["consumed"])
            row["unbounded_kib"] = backlog * size / 1024  # what a buffer without a window would have held
        out.append(row)
    return out


def _fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _fmt_spread(value: float | None) -> str:
    return "" if value is None else f" ±{value * 100:.0f}%"


def _render(
    cells: dict[str, dict[str, Any]], ratios: list[dict[str, Any]], memory: list[dict[str, Any]], load: list[float]
) -> str:
    lines = [
        "### Throughput (TCP, uvloop; 32-byte items unless stated)",
        "",
        "| label | what | items/s (median) | runs | CPU µs per item, client + server | same CPU |",
        "|---|---|---|---|---|---|",
    ]
    for label, cell in cells.items():
        task = cell["task"]
        if task["kind"] == "unary":
            what = f"unary echo, K={task['inflight']}"
        else:
            what = f"{task['streams']} stream{'s' if task['streams'] > 1 else ''}, {task['size']} B"
        if cell["argv"]:
            what += f" ({' '.join(cell['argv'])})"
        cpu = "—"
        if cell["client_cpu_us"] is not None and cell["server_cpu_us"] is not None:
            cpu = f"{cell['client_cpu_us']:.2f} + {cell['server_cpu_us']:.2f}"
        same = "—" if cell["same_cpu"] is None else f"{cell['same_cpu']:.2f}"
        rate = _fmt_rate(cell["items_per_s"]) + _fmt_spread(cell["spread"])
        errors = f" ({len(cell['errors'])} failed)" if cell["errors"] else ""
        lines.append(f"| {label} | {what} | {rate} | {cell['runs']}{errors} | {cpu} | {same} |")
    if ratios:
        lines += [
            "",
            "| ratio | median ÷ median | range within a round | CPU per unit, baseline ÷ stream | goal |",
            "|---|---|---|---|---|",
        ]
        for r in ratios:
            span = "—" if r["round_min"] is None else f"{r['round_min']:.2f}–{r['round_max']:.2f}"
            goal = "—" if r["goal"] is None else f"≥ {r['goal']:g} ({'met' if r['ratio'] >= r['goal'] else 'NOT met'})"
            cpu_ratio = "—" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}×"
            lines.append(f"| {r['stream']} ÷ {r['baseline']} | **{r['ratio']:.2f}×** | {span} | {cpu_ratio} | {goal} |")
    if memory:
        lines += [
            "",
            "### Memory: a consumer 1,000× slower than the producer (1 KiB items)",
            "",
            "| run | interval ms | taken | most items ahead (of 10 a second) | server RSS KiB first → max (growth) "
            "| client RSS KiB first → max (growth) | unbounded backlog MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in memory:
            if "error" in m:
                lines.append(f"| {m['label']} #{m['rep'] + 1} | ERROR {m['error']} |")
                continue
            s, c = m["server_rss_kib"], m["client_rss_kib"]
            unbounded = "—" if "unbounded_kib" not in m else f"{m['unbounded_kib'] / 1024:,.0f}"
            lines.append(
                f"| {m['label']} #{m['rep'] + 1} | {m['interval_s'] * 1000:.3f} | {m['consumed']:,} | {m['max_ahead']} "
                f"| {s[0]:,} → {m['server_max_rss_kib']:,} (+{m['server_growth_kib']:,}) "
                f"| {c[0]:,} → {m['client_max_rss_kib']:,} (+{m['client_growth_kib']:,}) | {unbounded} |"
            )
        lines += ["", _rss_over_time(memory)]
    if load:
        lines += [
            "",
            f"1-minute load average before each job: median {statistics.median(load):.2f}, "
            f"min {min(load):.2f}, max {max(load):.2f} (2 vCPUs).",
        ]
    return "\n".join(lines)


def _rss_over_time(memory: list[dict[str, Any]]) -> str:
    """RSS once a second during the first run of each memory job, side by side; the last row after the stream closed."""
    firsts: dict[str, dict[str, Any]] = {}
    for m in memory:
        if "error" not in m:
            firsts.setdefault(m["label"], m)
    if not firsts:
        return ""
    header = "| t s | " + " | ".join(f"{label}: server / client RSS KiB" for label in firsts) + " |"
    lines = [header, "|---|" + "---|" * len(firsts)]
    during = max(len(m["server_rss_kib"]) - 1 for m in firsts.values())
    for i in [*range(during), -1]:
        cells = []
        for m in firsts.values():
            s, c = m["server_rss_kib"][:-1], m["client_rss_kib"][:-1]
            if i == -1:
                s, c = m["server_rss_kib"], m["client_rss_kib"]
            cells.append(f"{s[i]:,} / {c[i]:,}" if i < len(s) else "")
        lines.append(f"| {'after' if i == -1 else i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _environment() -> dict[str, str]:
    versions = {}
    for name in ("anyio", "uvloop", "grpcio", "msgspec"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        **versions,
        "callrt": _callrt_version(),
    }


def _callrt_version() -> str:
    """The commit of the callrt measured, ``+dirty`` when its files differ from it (``unknown`` outside git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "callrt"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if changes else "")


def _available(wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    systems: list[str] = []
    notes: list[str] = []
    for name in wanted:
        try:
            load_stream_system(name)
        except (ImportError, KeyError) as exc:
            notes.append(f"{name}: unavailable ({type(exc).__name__}: {exc})")
            continue
        systems.append(name)
    return systems, notes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", "-r", type=int, help="runs per job (median kept); default 5, 1 with --quick")
    parser.add_argument("--quick", action="store_true", help="a smoke test: one short run of a few jobs (~20 s)")
    parser.add_argument(
        "--systems", default="callrt,grpc,raw", help="comma-separated, of callrt, grpc, raw (default: all)"
    )
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="the memory jobs")
    parser.add_argument("--memory-repeat", type=int, help="runs per memory job (default 2, 1 with --quick)")
    parser.add_argument("--memory-windows", default="16,256", help="windows of the memory jobs (items)")
    parser.add_argument(
        "--memory-interval",
        type=float,
        help="seconds between the slow consumer's items (default: 1,000× the producer's time per item, "
        "measured in this run; 1 ms with --quick)",
    )
    parser.add_argument(
        "--pin",
        choices=sorted(PINS),
        default="none",
        help="CPU placement: none (default; the scheduler decides), same (both on CPU 0), "
        "split (server CPU 0, client CPU 1)",
    )
    parser.add_argument("--out", type=Path, help=f"JSON output (default {RESULTS.relative_to(REPO)})")
    parser.add_argument("--cprofile", type=Path, help="run every process under cProfile, stats in this directory")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_serve", "_client"):
        return _role(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 5)
    memory_repeat = args.memory_repeat or (1 if args.quick else 2)
    systems, notes = _available([s for s in args.systems.split(",") if s])
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    jobs = _throughput_jobs(systems, args.quick)
    if not jobs:
        print("nothing to run", file=sys.stderr)
        return 2
    started = time.time()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="callrt-bench-streams-") as workdir:
        runner = Runner(Path(workdir), args.verbose, args.pin, args.cprofile)
        try:
            print(f"throughput: {len(jobs)} jobs × {repeat} runs", flush=True)
            _rounds(runner, jobs, repeat, runs)
            cells = _summary(runs, jobs)
            producer_rate = (cells.get("callrt 1KiB") or {}).get("items_per_s")
            memory_jobs: list[Job] = []
            if args.memory and "callrt" in systems:
                interval = args.memory_interval
                if interval is None:
                    interval = _SLOWDOWN / producer_rate if producer_rate else 1e-3
                windows = [int(w) for w in args.memory_windows.split(",") if w]
                memory_jobs = _memory_jobs(interval, args.quick, windows)
                print(f"memory: {len(memory_jobs)} jobs × {memory_repeat} runs, one item per {interval * 1e3:.3f} ms")
                _rounds(runner, memory_jobs, memory_repeat, runs)
        except KeyboardInterrupt:
            print("interrupted: reporting what was measured", file=sys.stderr)
            cells = _summary(runs, jobs)
            producer_rate = (cells.get("callrt 1KiB") or {}).get("items_per_s")
        finally:
            runner.close()
    ratios = _ratios(runs, cells)
    memory = _memory_summary(runs, producer_rate, 1024)
    load = [r.load1 for r in runs]
    print("\n" + _render(cells, ratios, memory, load))
    out: Path = args.out or RESULTS
    document = {
        "argv": argv,
        "repeat": repeat,
        "memory_repeat": memory_repeat,
        "quick": args.quick,
        "pin": args.pin,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "environment": _environment(),
        "skipped": notes,
        "load1": {"median": _median(load), "min": min(load, default=None), "max": max(load, default=None)},
        "producer_rate_1kib": producer_rate,
        "cells": cells,
        "ratios": ratios,
        "memory": memory,
        "runs": [
            {**dataclasses.asdict(r.job), "rep": r.rep, "load1": r.load1, "result": r.result, "error": r.error}
            for r in runs
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
