"""The measurement loops, shared by every system: they see only :class:`~bench.systems.Client`.

All loops are bounded by durations and counts, run on any anyio backend and
return plain JSON-ready dicts:

* :func:`latency` — sequential calls, one at a time, after a warm-up;
* :func:`throughput` — ``inflight`` callers per connection for a fixed time;
* :func:`memory` — the server's RSS growth per idle connection and per parked call.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from time import perf_counter, perf_counter_ns
from typing import Any

import anyio
from anyio.abc import TaskStatus

from bench.common import cpu_seconds, last_cpu, read_rss_kib
from bench.systems import Client

__all__ = (
    "Connect",
    "Placement",
    "latency",
    "memory",
    "open_connections",
    "percentile",
    "throughput",
)

Result = dict[str, Any]
_PLACEMENT_EVERY = 256  # sequential calls between two placement samples
_PLACEMENT_PERIOD = 0.02  # seconds between placement samples under load
Connect = Callable[[], AbstractAsyncContextManager[Client]]


class Placement:
    """How often client and server were last seen on the same CPU.

    On a small VM the scheduler's placement dominates latency (a wake-up on
    the same vCPU is several times cheaper than across vCPUs), so every
    result carries ``same_cpu``: the share of samples with both on one CPU.
    """

    def __init__(self, server_pid: int) -> None:
        self._server_pid = server_pid
        self._client_pid = os.getpid()
        self._same = self._samples = 0

    def sample(self) -> None:
        self._samples += 1
        self._same += last_cpu(self._server_pid) == last_cpu(self._client_pid)

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the client (this process) and the server."""
        return cpu_seconds(self._client_pid), cpu_seconds(self._server_pid)

    @property
    def same_cpu(self) -> float | None:
        return self._same / self._samples if self._samples else None


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of already sorted samples."""
    rank = max(1, math.ceil(q * len(sorted_samples)))
    return sorted_samples[rank - 1]


async def _check_echo(client: Client, payload: bytes) -> None:
    echoed = await client.call(payload)
    if echoed != payload:
        raise AssertionError(f"echo returned {len(echoed)} bytes, not the {len(payload)} sent")


async def latency(
    client: Client,
    payload: bytes,
    placement: Placement,
    *,
    warmup: float,
    duration: float,
    max_calls: int,
) -> Result:
    """Time calls made one after another; at most ``max_calls`` or ``duration`` seconds."""
    await _check_echo(client, payload)
    call = client.call
    warm_until = perf_counter() + warmup
    while perf_counter() < warm_until:
        await call(payload)
    samples: list[int] = []
    stop_ns = perf_counter_ns() + int(duration * 1e9)
    while len(samples) < max_calls:
        start = perf_counter_ns()
        await call(payload)
        end = perf_counter_ns()
        samples.append(end - start)
        if end > stop_ns:
            break
        if len(samples) % _PLACEMENT_EVERY == 1:
            placement.sample()
    samples.sort()
    micros = [ns / 1000 for ns in samples]
    return {
        "calls": len(micros),
        "p50_us": percentile(micros, 0.50),
        "p99_us": percentile(micros, 0.99),
        "p999_us": percentile(micros, 0.999),
        "mean_us": sum(micros) / len(micros),
        "same_cpu": placement.same_cpu,
    }


async def throughput(
    clients: Sequence[Client],
    payload: bytes,
    placement: Placement,
    *,
    inflight: int,
    warmup: float,
    duration: float,
) -> Result:
    """Keep ``inflight`` calls outstanding on each client; count completions after the warm-up."""
    for client in clients:
        await _check_echo(client, payload)
    completed = 0
    stop_at = perf_counter() + warmup + duration

    async def caller(call: Callable[[bytes], Any]) -> None:
        nonlocal completed
        while perf_counter() < stop_at:
            await call(payload)
            completed += 1

    async with anyio.create_task_group() as group:
        for client in clients:
            for _ in range(inflight):
                group.start_soon(caller, client.call)
        await anyio.sleep(warmup)
        start, first = perf_counter(), completed
        cpu_start = placement.cpu_seconds()
        while perf_counter() < stop_at:
            placement.sample()
            await anyio.sleep(_PLACEMENT_PERIOD)
        elapsed, calls = perf_counter() - start, completed - first
        cpu = [end - begin for begin, end in zip(cpu_start, placement.cpu_seconds(), strict=True)]
    rate = calls / elapsed
    return {
        "calls": calls,
        "calls_per_s": rate,
        "bytes_per_s": rate * len(payload),
        "same_cpu": placement.same_cpu,
        # Where the time goes (user + system, clock-tick resolution): on one shared vCPU the
        # two sides' sum is the whole cost of a call.
        "client_cpu_us": cpu[0] / calls * 1e6 if calls else None,
        "server_cpu_us": cpu[1] / calls * 1e6 if calls else None,
    }


async def memory(
    connect: Connect,
    server_pid: int,
    *,
    connections: int,
    held_calls: int,
    hold_ms: int,
    settle: float,
) -> Result:
    """Server RSS growth per idle connection, then per call parked in ``hold``.

    One connection is opened (and called) before the baseline is read; then
    ``connections`` more are opened one after another, each with one call so
    its handshake is done; then ``held_calls`` calls are parked on the first.
    """
    result: Result = {"connections": connections}
    async with open_connections(connect, 1) as (first,):
        await _check_echo(first, b"x")
        await anyio.sleep(settle)
        base = result["base_rss_kib"] = read_rss_kib(server_pid)
        opened = perf_counter()
        async with open_connections(connect, connections):
            result["open_s"] = perf_counter() - opened
            await anyio.sleep(settle)
            idle = result["idle_rss_kib"] = read_rss_kib(server_pid)
            result["kib_per_connection"] = (idle - base) / connections
            if first.hold is not None:
                result |= await _held_calls(first.hold, server_pid, idle, held_calls, hold_ms)
    return result


@asynccontextmanager
async def open_connections(connect: Connect, count: int) -> AsyncIterator[list[Client]]:
    """Open ``count`` connections one after another, each with one call made on it.

    Each connection lives in a task of its own rather than in one deep stack of
    context managers: a thousand nested task groups exhaust trio's recursion.
    """
    closing = anyio.Event()

    async def keep_open(*, task_status: TaskStatus[Client]) -> None:
        async with connect() as client:
            await client.call(b"x")
            task_status.started(client)
            await closing.wait()

    async with anyio.create_task_group() as group:
        try:
            yield [await group.start(keep_open) for _ in range(count)]
        finally:
            closing.set()


async def _held_calls(
    hold: Callable[[int], Any],
    server_pid: int,
    before: int,
    count: int,
    hold_ms: int,
) -> Result:
    """Park ``count`` calls for ``hold_ms``; RSS is read halfway through, when all have arrived."""
    result: Result = {"held_calls": count}
    started = perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(hold, hold_ms)
        await anyio.sleep(hold_ms / 2000)
        held = result["held_rss_kib"] = read_rss_kib(server_pid)
    result["kib_per_call"] = (held - before) / count
    # All parked at once only if they finished in about one hold time.
    result["held_concurrently"] = perf_counter() - started < 1.8 * hold_ms / 1000
    return result
