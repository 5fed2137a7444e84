"""``callrt serve --workers N`` on one port (SO_REUSEPORT): K=64 throughput from two client processes.

::

    .venv/bin/python -m bench.workers                       # --workers 1 and 2, 5 runs each, interleaved
    .venv/bin/python -m bench.workers --workers 1 2 4 --runs 3 --duration 5

Each run starts ``python -m callrt serve bench.workers:Echo --listen tcp://127.0.0.1:PORT
--workers N`` afresh, then two client processes at once. Each client process opens
``--connections`` connections (separate clients: the kernel gives each new connection to one
worker, by a hash of its addresses) and keeps ``K / connections`` calls in flight on each, K=64
per process; after ``--warmup`` seconds it counts completed calls for ``--duration`` seconds.
A run's figure is the sum over both processes; the table shows each setting's median and
spread ((max - min) / median), and how the connections landed on the workers (their pids).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio

from bench.common import cpu_seconds, free_tcp_port
from callrt import call, component, inline

ROOT = Path(__file__).resolve().parent.parent


@component(name="bench.WorkersEcho")
class Echo:
    @inline
    def echo(self, data: bytes) -> bytes:
        return data

    @inline
    def pid(self) -> int:
        return os.getpid()

    @inline
    def work(self, data: bytes, us: int) -> bytes:
        """Echo after ``us`` microseconds of CPU on the server's loop: a handler that costs something."""
        end = time.perf_counter() + us / 1e6
        while time.perf_counter() < end:
            pass
        return data


async def _client(
    url: str, inflight: int, connections: int, warmup: float, duration: float, work_us: int
) -> dict[str, object]:
    payload = b"x" * 64
    completed = 0
    stop_at = time.perf_counter() + warmup + duration
    pids: list[int] = []
    async with anyio.create_task_group() as tg:

        async def one_connection() -> None:
            nonlocal completed
            async with call.connect(url) as client:
                stub = client.stub(Echo)
                pids.append(await stub.pid())  # type: ignore[misc]

                async def caller() -> None:
                    nonlocal completed
                    while time.perf_counter() < stop_at:
                        if work_us:
                            await stub.work(payload, work_us)  # type: ignore[misc]
                        else:
                            await stub.echo(payload)  # type: ignore[misc]
                        completed += 1

                async with anyio.create_task_group() as callers:
                    for _ in range(inflight // connections):
                        callers.start_soon(caller)

        for _ in range(connections):
            tg.start_soon(one_connection)
        await anyio.sleep(warmup)
        workers = sorted(set(pids))  # the server's processes this one reached (on this machine)
        start, first, cpu = time.perf_counter(), completed, time.process_time()
        server_cpu = [cpu_seconds(pid) for pid in workers]
        await anyio.sleep(max(0.0, stop_at - time.perf_counter()))
        elapsed, calls, cpu = time.perf_counter() - start, completed - first, time.process_time() - cpu
        server_cpu = [cpu_seconds(pid) - before for pid, before in zip(workers, server_cpu, strict=True)]
    return {
        "calls_per_s": calls / elapsed,
        "pids": pids,
        "cpu_share": cpu / elapsed,
        "server_cpu_share": {str(pid): used / elapsed for pid, used in zip(workers, server_cpu, strict=True)},
    }


def _run(workers: int, args: argparse.Namespace) -> dict[str, object]:
    port = free_tcp_port()
    url = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    serve = [sys.executable, "-m", "callrt", "serve", "bench.workers:Echo", "--listen", url, "--workers", str(workers)]
    server = subprocess.Popen(serve, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert server.stderr is not None
        for _ in range(workers):
            ready, _, _ = select.select([server.stderr], [], [], 30)
            line = server.stderr.readline() if ready else ""
            if not line.startswith("serving on"):
                server.kill()
                raise RuntimeError(f"the server did not start: {line}{server.stderr.read()}")
        client = [sys.executable, "-m", "bench.workers", "--client", url, "--inflight", str(args.inflight)]
        client += [
            "--connections",
            str(args.connections),
            "--warmup",
            str(args.warmup),
            "--duration",
            str(args.duration),
            "--work-us",
            str(args.work_us),
        ]
        clients = [
            subprocess.Popen(client, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(args.clients)
        ]
        results = []
        for proc in clients:
            out, _ = proc.communicate(timeout=args.warmup + args.duration + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"a client failed ({proc.returncode})")
            results.append(json.loads(out))
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stderr is not None:
            server.stderr.close()
    pids = [pid for r in results for pid in r["pids"]]
    split = sorted((pids.count(p) for p in set(pids)), reverse=True)
    cpu = [round(float(r["cpu_share"]), 2) for r in results]
    shares: dict[str, float] = {}
    for r in results:  # the clients measured the same interval: a worker seen by both, its larger figure
        for pid, share in r["server_cpu_share"].items():  # type: ignore[attr-defined]
            shares[pid] = max(shares.get(pid, 0.0), share)
    server_cpu = sorted((round(v, 2) for v in shares.values()), reverse=True)
    return {
        "calls_per_s": sum(float(r["calls_per_s"]) for r in results),  # type: ignore[arg-type]
        "split": split,
        "client_cpu": cpu,
        "server_cpu": server_cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--inflight", type=int, default=64, help="calls in flight per client process (K)")
    parser.add_argument("--connections", type=int, default=4, help="connections per client process")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--work-us", type=int, default=0, help="CPU microseconds each call costs the server (0: echo)")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # run as one client process against this URL
    args = parser.parse_args(argv)
    if args.client:
        result = anyio.run(
            _client, args.client, args.inflight, args.connections, args.warmup, args.duration, args.work_us
        )
        print(json.dumps(result))
        return
    print(
        f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}, server work per call: {args.work_us} us", flush=True
    )
    runs: dict[int, list[dict[str, object]]] = {n: [] for n in args.workers}
    for i in range(args.runs):  # interleaved: a drift in the machine's load hits every setting alike
        for n in args.workers:
            try:
                run = _run(n, args)
            except RuntimeError as exc:  # a port taken between choosing and binding it, say: once more
                print(f"run {i + 1} --workers {n} failed, run again: {exc}", flush=True)
                run = _run(n, args)
            runs[n].append(run)
            print(
                f"run {i + 1} --workers {n}: {run['calls_per_s']:,.0f} calls/s, connections per worker {run['split']}, "
                f"CPU share of each client {run['client_cpu']}, of each worker {run['server_cpu']}",
                flush=True,
            )
    print()
    print(f"| --workers | K={args.inflight} x {args.clients} processes, calls/s (median) | spread | runs |")
    print("|---|---|---|---|")
    base = None
    for n in args.workers:
        rates = [float(r["calls_per_s"]) for r in runs[n]]  # type: ignore[arg-type]
        median = statistics.median(rates)
        base = base or median
        spread = (max(rates) - min(rates)) / median
        print(
            f"| {n} | {median:,.0f} ({median / base:.2f}x) | ±{spread:.0%} | {', '.join(f'{r:,.0f}' for r in rates)} |"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
