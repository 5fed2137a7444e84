"""Client process: runs measurement steps against a server and prints JSON lines.

``python -m bench.client SYSTEM --address URL --loop LOOP --server-pid PID --steps JSON``

Runs the steps in order, each on connections of its own, and prints one JSON
line per step: ``{"step": ..., "result": {...}}`` or ``{"step": ..., "error": "..."}``.
A failed step does not stop the following ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import anyio

from bench import measure
from bench.common import run_on_loop
from bench.server import parse_process_args
from bench.steps import LatencyStep, MemoryStep, Step, decode_steps, step_to_dict
from bench.systems import Client, System

__all__ = ("main",)

T = TypeVar("T")

_STEP_GRACE = 15.0  # seconds a step may overrun its budget before it fails


async def _run_step(system: System, args: argparse.Namespace, step: Step) -> measure.Result:
    def connect() -> AbstractAsyncContextManager[Client]:
        return system.connect(args.address, args)

    if isinstance(step, MemoryStep):
        return await measure.memory(
            connect,
            int(args.server_pid),
            connections=step.connections,
            held_calls=step.held_calls,
            hold_ms=step.hold_ms,
            settle=step.settle,
        )
    payload = bytes(range(256)) * (step.payload // 256) + b"p" * (step.payload % 256)
    connections = 1 if isinstance(step, LatencyStep) else step.connections
    placement = measure.Placement(int(args.server_pid))
    async with measure.open_connections(connect, connections) as clients:
        if isinstance(step, LatencyStep):
            return await measure.latency(
                clients[0],
                payload,
                placement,
                warmup=step.warmup,
                duration=step.duration,
                max_calls=step.max_calls,
            )
        return await measure.throughput(
            clients,
            payload,
            placement,
            inflight=step.inflight,
            warmup=step.warmup,
            duration=step.duration,
        )


def _describe(exc: BaseException) -> str:
    """The innermost errors of ``exc``, unwrapping exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(_describe(inner) for inner in exc.exceptions))
    return f"{type(exc).__name__}: {exc}"


async def _within(seconds: float, work: Awaitable[T]) -> T:
    """``await work``, failing with TimeoutError after ``seconds``, without a deadline on its calls.

    Under ``anyio.fail_after`` every callrt call would carry the scope's deadline to the
    server, which then runs it in a cancel scope of its own: a cost that a caller without
    a deadline (and grpc's calls here, which carry none) does not pay.
    """
    expired = False
    async with anyio.create_task_group() as tg:

        async def expire() -> None:
            nonlocal expired
            await anyio.sleep(seconds)
            expired = True
            tg.cancel_scope.cancel()

        tg.start_soon(expire)
        result = await work
        tg.cancel_scope.cancel()
    if expired:
        raise TimeoutError(f"the step took more than {seconds:.0f} s")
    return result


async def _run(system: System, args: argparse.Namespace) -> None:
    for step in decode_steps(args.steps):
        line: dict[str, object] = {"step": step_to_dict(step)}
        try:
            line["result"] = await _within(step.budget + _STEP_GRACE, _run_step(system, args, step))
        except Exception as exc:  # reported, and the next step still runs
            traceback.print_exc(file=sys.stderr)
            line["error"] = _describe(exc)
        print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> None:
    system, args = parse_process_args(__doc__ or "", argv, extra=("--server-pid", "--steps"))

    async def run() -> None:
        await _run(system, args)

    run_on_loop(run, args.loop)


if __name__ == "__main__":
    main()
