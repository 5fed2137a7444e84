"""What several test modules share: backend parameters, short scratch directories, a child's stderr lines, a logging client interceptor."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from callrt.interceptors import ClientCall, ClientNext

# For tests about the asyncio shell (an asyncio Protocol), which trio never runs.
ASYNCIO_ONLY = [
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
]
ALL_BACKENDS = [*ASYNCIO_ONLY, pytest.param(("trio", {}), id="trio")]


def short_tempdir() -> Iterator[Path]:
    """A fresh directory, removed afterwards; short on purpose: a Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="crt", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def rss_kib(pid: int) -> int:
    """A process's resident memory, KiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stderr_lines(proc: subprocess.Popen[str], count: int, timeout: float = 20) -> list[str]:
    """The first ``count`` lines ``proc`` writes on stderr (a text pipe), each within ``timeout`` seconds.

    A thread reads them: ``select`` on the pipe, then ``readline``, misses a second line that
    arrived with the first (the text wrapper has already read it from the pipe).
    """
    stream = proc.stderr
    assert stream is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in iter(stream.readline, "")], daemon=True).start()
    got: list[str] = []
    for _ in range(count):
        try:
            got.append(lines.get(timeout=timeout).rstrip("\n"))
        except queue.Empty:
            raise AssertionError(f"no line on stderr within {timeout}s, after {got}; exit code {proc.poll()}") from None
    return got


@contextmanager
def serving(cmd: list[str], cwd: Path, env: dict[str, str], lines: int) -> Iterator[list[str]]:
    """Run ``cmd``; yield the first ``lines`` lines it writes on stderr; then SIGTERM it and expect exit code 0."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        yield stderr_lines(proc, lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, "it did not drain and exit 0 on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def recording_client(name: str, log: list[str]) -> Any:
    """A client interceptor that logs, into ``log``, entering and leaving the chain under ``name``."""

    async def interceptor(call: ClientCall, next: ClientNext) -> Any:
        log.append(f"{name} in {call.method} replica={call.replica}")
        try:
            return await next(call)
        finally:
            log.append(f"{name} out replica={call.replica}")

    return interceptor


def install_sdk() -> tuple[Any, Any]:
    """Make the OpenTelemetry SDK this process's tracer and meter providers, keeping everything in memory.

    Returns the span exporter and the metric reader. For the apps the span tests run in a
    process of their own (the SDK's providers can be set once per process).
    """
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return exporter, reader


def print_metrics(reader: Any) -> None:
    """Print every metric ``reader`` (from :func:`install_sdk`) collected, a JSON line each, for a test to read.

    Each point has its attributes and, for a histogram, its count and sum; for a sum or a gauge, its value.
    """
    import json

    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points = [{"attributes": dict(p.attributes or {}), **_point(p)} for p in metric.data.data_points]
                print(json.dumps({"metric": metric.name, "unit": metric.unit, "points": points}))


def _point(point: Any) -> dict[str, float]:
    if hasattr(point, "count"):
        return {"count": point.count, "sum": point.sum}  # a histogram's
    return {"value": point.value}  # a sum's or a gauge's
