"""Compression figures (issue 14): a 1 MiB echo, compressible and random, each codec against off.

``python -m bench.compression [--repeat N] [--calls N]``: a worker process serves ``bench.Echo``-like
echo (``tests.components:Echo``) on TCP with uvloop; this process calls it with
``ClientOptions(compression=...)``, 8 calls in flight. Reported per codec and payload: MiB/s of
payload echoed (each way), and the CPU each side spent per call (client: this process; server:
the worker's /proc stat), medians of ``--repeat`` runs, interleaved. Written to
``bench/results/compression.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import anyio
import uvloop

from callrt import call
from callrt.compression import CODECS, compress
from callrt.options import ClientOptions
from callrt.testing import WorkerProcess
from tests.components import Echo

IN_FLIGHT = 8
TICK = os.sysconf("SC_CLK_TCK")


def json_like(size: int) -> bytes:
    """Compressible text like a JSON API's: repeated keys, varying numbers and names."""
    row = 0
    out = bytearray()
    while len(out) < size:
        out += b'{"id": %d, "name": "customer %d", "city": "Lyon", "orders": [%d, %d], "vip": false},\n' % (
            row,
            row * 7,
            row * 3,
            row * 11,
        )
        row += 1
    return bytes(out[:size])


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def run_once(endpoint: str, pid: int, codec: str | None, payload: bytes, calls: int) -> dict[str, float]:
    async with call.connect(endpoint, options=ClientOptions(compression=codec)) as client:
        echo = client.stub(Echo)
        assert await echo.echo(payload) == payload  # connected, and a warm-up
        left = calls

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await echo.echo(payload)

        server_before, client_before, started = server_cpu(pid), time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(IN_FLIGHT):
                tg.start_soon(caller)
        elapsed = time.perf_counter() - started
        client_cpu, server_used = time.process_time() - client_before, server_cpu(pid) - server_before
    return {
        "mib_per_s": calls * len(payload) / elapsed / (1 << 20),
        "client_cpu_ms_per_call": client_cpu / calls * 1e3,
        "server_cpu_ms_per_call": server_used / calls * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args()
    payloads = {"json-like": json_like(args.size), "random": os.urandom(args.size)}
    codecs: list[str | None] = [None, *sorted(CODECS)]
    runs: dict[str, list[dict[str, float]]] = {}
    with WorkerProcess("tcp://127.0.0.1:0", ["tests.components:Echo"], backend="asyncio") as worker:
        assert worker.proc is not None and worker.endpoint is not None
        for _ in range(args.repeat):
            for name, payload in payloads.items():
                for codec in codecs:
                    result = uvloop.run(run_once(str(worker.endpoint), worker.proc.pid, codec, payload, args.calls))
                    runs.setdefault(f"{name}/{codec or 'off'}", []).append(result)
    medians = {
        cell: {key: statistics.median(r[key] for r in results) for key in results[0]} for cell, results in runs.items()
    }
    print(f"1 MiB echo, {IN_FLIGHT} in flight, TCP, uvloop; medians of {args.repeat} (load {os.getloadavg()[0]:.1f})")
    print("| payload | codec | on the wire | MiB/s | ÷ off | client CPU ms/call | server CPU ms/call |")
    print("|---|---|---|---|---|---|---|")
    for cell, m in medians.items():
        name, codec = cell.split("/")
        off = medians[f"{name}/off"]["mib_per_s"]
        packed = compress(CODECS[codec], payloads[name]) if codec != "off" else None
        wire = len(packed) / args.size if packed is not None else 1.0
        print(
            f"| {name} | {codec} | {wire:.0%} | {m['mib_per_s']:,.0f} | {m['mib_per_s'] / off:.2f}× | "
            f"{m['client_cpu_ms_per_call']:.2f} | {m['server_cpu_ms_per_call']:.2f} |"
        )
    out = Path(__file__).parent / "results" / "compression.json"
    out.write_text(json.dumps({"runs": runs, "medians": medians, "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
