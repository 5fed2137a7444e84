"""Fan-out and affinity latency (issue 14): ``python -m bench.fanout [--repeat N] [--duration S]``.

Three worker processes (``python -m callrt.testing.worker``, uvloop) serve
``bench.fanout:Echo`` on TCP; the client, this process on uvloop, holds one
connection to each. One call at a time, 32-byte payloads, after a warm-up, it
measures the latency of:

* ``unary``: one ``echo`` call (round robin over the three replicas);
* ``3 unary calls at once``: three stub calls in a task group, one per replica (round
  robin): the fan-out's work done by hand, the baseline for its overhead;
* ``fan-out``: ``client.multi(EchoAPI).echo(payload)`` iterated to the end (all three replies);
* ``fan-out, first``: the same with ``expected=1`` (ends at the first reply, cancels the rest);
* ``affinity``: ``client.by_affinity(EchoAPI).echo(payload)``: three claims, then the call to the winner.

Each of ``--repeat`` runs measures every shape for ``--duration`` seconds, in
turn (interleaved, so drifts hit all alike); the table shows the median over
runs of each run's p50 and p99, ``±`` the spread ``(max − min) / median`` of
the p50s, and each shape's p50 against unary's. The 1-minute load average is
printed before and after: other work on the machine shows there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import anyio

from callrt import call, component, inline, interface
from callrt.testing import WorkerProcess

__all__ = ("Echo", "EchoAPI", "main")

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"x" * 32


@interface(name="bench.FanoutEcho")
class EchoAPI(Protocol):
    async def echo(self, data: bytes) -> bytes: ...


@component(implements=EchoAPI)
class Echo:
    @inline
    def echo(self, data: bytes) -> bytes:
        return data


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _time(shape: Callable[[], Awaitable[object]], duration: float, warmup: float) -> tuple[float, float, int]:
    """p50 and p99 (µs) of ``shape`` called one at a time for ``duration`` s after ``warmup`` s, and the count."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        await shape()
    samples: list[float] = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end and len(samples) < 200_000:
        started = time.perf_counter()
        await shape()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return _percentile(samples, 0.5), _percentile(samples, 0.99), len(samples)


async def _measure(
    urls: list[str], repeat: int, duration: float, warmup: float
) -> dict[str, list[tuple[float, float, int]]]:
    results: dict[str, list[tuple[float, float, int]]] = {}
    async with call.connect(urls) as client:
        unary = client.stub(EchoAPI)
        multi = client.multi(EchoAPI)
        first = client.multi(EchoAPI, expected=1)
        by_affinity = client.by_affinity(EchoAPI)
        replicas = [reply async for reply in multi.echo(PAYLOAD)]  # waits for every replica to connect
        assert len(replicas) == 3 and all(r.ok for r in replicas), replicas

        async def fan_out() -> None:
            async for reply in multi.echo(PAYLOAD):
                reply.result()

        async def fan_out_first() -> None:
            async for reply in first.echo(PAYLOAD):
                reply.result()

        async def three_unary() -> None:
            # The same work by hand: three unary calls at once (round robin: one per replica).
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(unary.echo, PAYLOAD)

        shapes: dict[str, Callable[[], Awaitable[object]]] = {
            "unary": lambda: unary.echo(PAYLOAD),
            "3 unary calls at once (task group)": three_unary,
            "fan-out (3 replies)": fan_out,
            "fan-out, expected=1": fan_out_first,
            "affinity (3 claims + call)": lambda: by_affinity.echo(PAYLOAD),
        }
        for run in range(repeat):
            for name, shape in shapes.items():
                results.setdefault(name, []).append(await _time(shape, duration, warmup))
            print(f"run {run + 1}/{repeat} done", file=sys.stderr, flush=True)
    return results


def _report(results: dict[str, list[tuple[float, float, int]]]) -> str:
    lines = [
        "| shape | p50 µs | ± | p99 µs | calls per run | p50 ÷ unary |",
        "|---|---|---|---|---|---|",
    ]
    unary_p50 = statistics.median(p50 for p50, _, _ in results["unary"])
    for name, runs in results.items():
        p50s = [p50 for p50, _, _ in runs]
        p50 = statistics.median(p50s)
        spread = (max(p50s) - min(p50s)) / p50
        p99 = statistics.median(p99 for _, p99, _ in runs)
        count = int(statistics.median(n for _, _, n in runs))
        lines.append(f"| {name} | {p50:.1f} | {spread:.0%} | {p99:.1f} | {count:,} | {p50 / unary_p50:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs (default 5); the table shows medians")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per shape per run")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds of calls before each measurement")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the workers import bench.fanout from here
    workers = [WorkerProcess("tcp://127.0.0.1:0", ["bench.fanout:Echo"], backend="asyncio") for _ in range(3)]
    try:
        urls = [str(worker.start()) for worker in workers]
        print(f"load average before: {os.getloadavg()[0]:.2f}; workers on {', '.join(urls)}", flush=True)

        async def run() -> None:
            results = await _measure(urls, args.repeat, args.duration, args.warmup)
            print(_report(results))

        anyio.run(run, backend="asyncio", backend_options={"use_uvloop": True})
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        for worker in workers:
            worker.stop()


if __name__ == "__main__":
    main()
