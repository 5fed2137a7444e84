"""Results: records from client processes, medians per cell, markdown tables and ratios.

A *record* is one step of one run; a *cell* gathers the records of the same
(variant, transport, loop, step) over the repetitions and reports medians
and the spread ``(max - min) / median`` of the headline metrics, so noise is
visible next to every number.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.profiles import Job

__all__ = ("Cell", "Record", "aggregate", "one_line", "render")

_BASELINES = ("raw", "raw-coalesced", "grpc")
_HEADLINE_LOAD = "K=64"

CellKey = tuple[str, str, str, str, str, int]


@dataclass(frozen=True, slots=True)
class Record:
    """One step of one run: its result or why it has none."""

    variant: str
    system: str
    transport: str
    loop: str
    rep: int
    step: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def of(cls, job: Job, rep: int, step: dict[str, Any], **outcome: Any) -> Record:
        v = job.variant
        return cls(v.label, v.system, job.transport, job.loop, rep, step, **outcome)

    @classmethod
    def from_line(cls, job: Job, rep: int, line: str) -> Record:
        data = json.loads(line)
        return cls.of(job, rep, data["step"], result=data.get("result"), error=data.get("error"))

    @property
    def key(self) -> CellKey:
        return (
            self.variant, self.transport, self.loop,
            self.step["kind"], step_label(self.step), self.step.get("payload", 0),
        )  # fmt: skip


def step_label(step: dict[str, Any]) -> str:
    if step["kind"] != "throughput":
        return str(step["kind"])
    if step["connections"] == 1:
        return f"K={step['inflight']}"
    return f"{step['connections']}×{step['inflight']}"


@dataclass(slots=True)
class Cell:
    """The repetitions of one measurement."""

    variant: str
    system: str
    transport: str
    loop: str
    kind: str
    label: str
    payload: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, metric: str) -> float | None:
        values = [run[metric] for run in self.runs if isinstance(run.get(metric), int | float)]
        return statistics.median(values) if values else None

    def spread(self, metric: str) -> float | None:
        values = [run[metric] for run in self.runs if isinstance(run.get(metric), int | float)]
        middle = statistics.median(values) if len(values) > 1 else 0
        return (max(values) - min(values)) / middle if middle else None

    def to_dict(self) -> dict[str, Any]:
        metrics = sorted({k for run in self.runs for k, v in run.items() if _numeric(v)})
        return {
            "variant": self.variant, "system": self.system, "transport": self.transport,
            "loop": self.loop, "kind": self.kind, "label": self.label, "payload": self.payload,
            "median": {metric: self.median(metric) for metric in metrics},
            "runs": self.runs, "errors": self.errors,
        }  # fmt: skip


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def aggregate(records: Iterable[Record]) -> list[Cell]:
    """Group records into cells, in the order they were first measured."""
    cells: dict[CellKey, Cell] = {}
    for record in records:
        variant, transport, loop, kind, label, payload = record.key
        cell = cells.get(record.key)
        if cell is None:
            cell = cells[record.key] = Cell(variant, record.system, transport, loop, kind, label, payload)
        if record.result is not None:
            cell.runs.append(record.result)
        if record.error is not None:
            cell.errors.append(f"run {record.rep + 1}: {record.error}")
    return list(cells.values())


# -- formatting ---------------------------------------------------------------


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def _us(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _spread(value: float | None) -> str:
    return "" if value is None else f" ±{value * 100:.0f}%"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _where(cell: Cell) -> list[str]:
    return [cell.variant, cell.transport, cell.loop, _size(cell.payload)]


# -- sections -----------------------------------------------------------------


def _each_run(cell: Cell, metric: str, fmt: Callable[[float], str]) -> str:
    values = [run.get(metric) for run in cell.runs]
    return " · ".join("—" if value is None else fmt(value) for value in values)


def _latency_section(cells: list[Cell]) -> str | None:
    rows = [
        [
            *_where(c),
            _us(c.median("p50_us")),
            _us(c.median("p99_us")),
            _us(c.median("p999_us")),
            _each_run(c, "p50_us", _us),
            _each_run(c, "same_cpu", lambda share: f"{share:.0%}"),
            f"{c.median('calls') or 0:,.0f}",
        ]
        for c in cells
        if c.kind == "latency" and c.runs
    ]
    if not rows:
        return None
    header = ["system", "transport", "loop", "payload", "p50", "p99", "p99.9"]
    header += ["p50 of each run", "same CPU, each run", "calls"]
    return "## Sequential latency (µs)\n\n" + _table(header, rows)


def _loads(cells: list[Cell]) -> list[str]:
    return list(dict.fromkeys(c.label for c in cells if c.kind == "throughput"))


def _throughput_section(cells: list[Cell], title: str, metric: str, scale: float) -> str | None:
    loads = _loads(cells)
    grid: dict[tuple[str, ...], dict[str, Cell]] = {}
    for cell in cells:
        if cell.kind == "throughput" and cell.runs and (scale == 1 or cell.payload >= 4096):
            grid.setdefault(tuple(_where(cell)), {})[cell.label] = cell
    if not grid:
        return None

    def fmt(cell: Cell | None) -> str:
        if cell is None:
            return "—"
        value = cell.median(metric)
        return _rate(None if value is None else value / scale) + _spread(cell.spread(metric))

    rows = [[*where, *(fmt(by_load.get(load)) for load in loads)] for where, by_load in grid.items()]
    header = ["system", "transport", "loop", "payload", *loads]
    return f"## {title}\n\n" + _table(header, rows)


def _cpu_section(cells: list[Cell]) -> str | None:
    rows = [
        [
            *_where(c),
            _number(c, "client_cpu_us", 2),
            _number(c, "server_cpu_us", 2),
            _each_run(c, "client_cpu_us", lambda v: f"{v:.2f}"),
            _each_run(c, "server_cpu_us", lambda v: f"{v:.2f}"),
        ]
        for c in cells
        if c.kind == "throughput" and c.label == _HEADLINE_LOAD and c.median("client_cpu_us") is not None
    ]
    if not rows:
        return None
    header = ["system", "transport", "loop", "payload", "client", "server"]
    header += ["client, each run", "server, each run"]
    title = f"## CPU per call at {_HEADLINE_LOAD} (µs, user + system, each process)"
    return f"{title}\n\n" + _table(header, rows)


def _number(cell: Cell, metric: str, digits: int, scale: float = 1) -> str:
    value = cell.median(metric)
    return "—" if value is None else f"{value / scale:.{digits}f}"


def _per_call(cell: Cell) -> str:
    serialized = any(run.get("held_concurrently") is False for run in cell.runs)
    note = " (calls did not all park at once)" if serialized else ""
    return _number(cell, "kib_per_call", 2) + note


def _memory_section(cells: list[Cell]) -> str | None:
    measured = [c for c in cells if c.kind == "memory" and c.runs]
    if not measured:
        return None
    rows = [
        [
            c.variant,
            c.transport,
            c.loop,
            _number(c, "base_rss_kib", 1, scale=1024),
            _number(c, "kib_per_connection", 1),
            _per_call(c),
            _number(c, "open_s", 2),
        ]
        for c in measured
    ]
    n = measured[0].runs[0]["connections"]
    header = ["system", "transport", "loop", "server RSS at start (MiB)"]
    header += ["KiB / idle connection", "KiB / parked call", f"open {n} conns (s)"]
    title = f"## Server memory ({n} idle connections, then {n} calls parked)"
    return f"{title}\n\n" + _table(header, rows)


class _Index:
    """Finds the cell a callrt cell is compared with."""

    def __init__(self, cells: list[Cell]) -> None:
        self._cells = {(c.variant, c.transport, c.loop, c.label, c.payload): c for c in cells}

    def find(self, variant: str, like: Cell, label: str) -> tuple[Cell | None, bool]:
        """The baseline's cell on the same loop, else on uvloop (second item: it fell back)."""
        for loop in (like.loop, "uvloop"):
            cell = self._cells.get((variant, like.transport, loop, label, like.payload))
            if cell is not None and cell.runs:
                return cell, loop != like.loop
        return None, False

    def ratio(self, variant: str, like: Cell, label: str, metric: str) -> tuple[float | None, bool]:
        mine, _ = self.find(like.variant, like, label)
        other, fell_back = self.find(variant, like, label)
        a = mine.median(metric) if mine else None
        b = other.median(metric) if other else None
        return (a / b if a is not None and b else None), fell_back


def _subjects(cells: list[Cell]) -> list[Cell]:
    """One cell per callrt variant, transport, loop and payload (its latency cell)."""
    return [c for c in cells if c.system == "callrt" and c.kind == "latency" and c.runs]


def _ratio_section(cells: list[Cell]) -> str | None:
    index, loads = _Index(cells), _loads(cells)
    load = _HEADLINE_LOAD if _HEADLINE_LOAD in loads else (loads[0] if loads else None)
    rows: list[list[str]] = []
    fell_back = False
    for subject in _subjects(cells):
        row = _where(subject)
        for baseline in _BASELINES:
            p50, fb1 = index.ratio(baseline, subject, "latency", "p50_us")
            tput, fb2 = (None, False) if load is None else index.ratio(baseline, subject, load, "calls_per_s")
            mark = "*" if fb1 or fb2 else ""
            fell_back |= fb1 or fb2
            row += [_ratio(p50) + mark, _ratio(tput) + mark]
        rows.append(row)
    if not rows:
        return None
    header = ["callrt", "transport", "loop", "payload"]
    for baseline in _BASELINES:
        header += [f"p50 ÷ {baseline}", f"{load} calls/s ÷ {baseline}"]
    note = "\n\n\\* baseline measured on uvloop (it does not run on this loop)." if fell_back else ""
    intro = "p50 ratio < 1: callrt is faster; calls/s ratio > 1: callrt does more.\n\n"
    return "## callrt ÷ baselines\n\n" + intro + _table(header, rows) + note


def _ratio_by_load_section(cells: list[Cell]) -> str | None:
    index, loads = _Index(cells), _loads(cells)
    if len(loads) < 2:
        return None
    rows = [
        [*_where(subject), baseline,
         *(_ratio(index.ratio(baseline, subject, load, "calls_per_s")[0]) for load in loads)]
        for subject in _subjects(cells) for baseline in _BASELINES
    ]  # fmt: skip
    if not rows:
        return None
    header = ["callrt", "transport", "loop", "payload", "÷", *loads]
    return "## callrt calls/s ÷ baseline, by load\n\n" + _table(header, rows)


def _tls_section(cells: list[Cell]) -> str | None:
    """The TLS profile's questions: what TLS costs each system, and callrt with TLS against grpc.aio with TLS."""
    index = _Index(cells)
    latency = {c.variant: c for c in cells if c.kind == "latency" and c.runs}
    cost: list[list[str]] = []
    for secure, plain in (("raw-coalesced-tls", "raw-coalesced"), ("callrt-tls", "callrt"), ("grpc-tls", "grpc")):
        for subject in (c for c in cells if c.variant == secure and c.kind == "latency" and c.runs):
            p50 = index.ratio(plain, subject, "latency", "p50_us")[0]
            tput = index.ratio(plain, subject, _HEADLINE_LOAD, "calls_per_s")[0]
            cost.append([f"{secure} ÷ {plain}", *_where(subject)[1:], _ratio(p50), _ratio(tput)])
    versus: list[list[str]] = []
    for subject in (c for c in cells if c.variant == "callrt-tls" and c.kind == "latency" and c.runs):
        p50 = index.ratio("grpc-tls", subject, "latency", "p50_us")[0]
        tput = index.ratio("grpc-tls", subject, _HEADLINE_LOAD, "calls_per_s")[0]
        versus.append(["callrt-tls ÷ grpc-tls", *_where(subject)[1:], _ratio(p50), _ratio(tput)])
    if not cost or "callrt-tls" not in latency:
        return None
    header = ["", "transport", "loop", "payload", "p50", f"{_HEADLINE_LOAD} calls/s"]
    goal = "Goals: callrt-tls ÷ callrt p50 ≤ 1.5×; callrt-tls ÷ grpc-tls calls/s ≥ 20×.\n\n"
    return "## TLS (mutual TLS 1.3): what it costs, and against grpc.aio\n\n" + goal + _table(header, cost + versus)


def _otel_section(cells: list[Cell]) -> str | None:
    """The otel profile's questions: what the SDK costs each system, and callrt with it against grpc.aio with it."""
    index = _Index(cells)
    rows: list[list[str]] = []
    for subject_variant, baseline in (("callrt-otel", "callrt"), ("grpc-otel", "grpc"), ("callrt-otel", "grpc-otel")):
        for subject in (c for c in cells if c.variant == subject_variant and c.kind == "latency" and c.runs):
            p50 = index.ratio(baseline, subject, "latency", "p50_us")[0]
            tput = index.ratio(baseline, subject, _HEADLINE_LOAD, "calls_per_s")[0]
            rows.append([f"{subject_variant} ÷ {baseline}", *_where(subject)[1:], _ratio(p50), _ratio(tput)])
    if not any(row[0] == "callrt-otel ÷ grpc-otel" for row in rows):
        return None
    header = ["", "transport", "loop", "payload", "p50", f"{_HEADLINE_LOAD} calls/s"]
    goal = "Goal: callrt-otel ÷ grpc-otel calls/s ≥ 10×.\n\n"
    return (
        "## OpenTelemetry SDK configured: what it costs, and against instrumented grpc.aio\n\n"
        + goal
        + _table(header, rows)
    )


def _errors_section(cells: list[Cell]) -> str | None:
    lines = [
        f"- {' '.join(_where(c))} {c.label}: {' '.join(error.split())}"
        for c in cells
        for error in dict.fromkeys(c.errors)
    ]
    return "## Errors\n\n" + "\n".join(lines) if lines else None


def render(cells: list[Cell], profile: str) -> str:
    """All sections as markdown, medians over the runs of each cell."""
    sections: list[Callable[[], str | None]] = [
        lambda: _latency_section(cells),
        lambda: _throughput_section(cells, "Throughput (calls/s)", "calls_per_s", 1),
        lambda: _throughput_section(cells, "Throughput (MiB/s, payloads ≥ 4 KiB)", "bytes_per_s", 1 << 20),
        lambda: _cpu_section(cells),
        lambda: _memory_section(cells),
        lambda: _ratio_section(cells),
        lambda: _ratio_by_load_section(cells),
        lambda: _tls_section(cells),
        lambda: _otel_section(cells),
        lambda: _errors_section(cells),
    ]
    runs = max((len(c.runs) for c in cells), default=0)
    head = f"# bench — profile {profile}, median of {runs} runs per cell (±: (max − min) / median)"
    return "\n\n".join([head, *filter(None, (section() for section in sections))])


def one_line(records: list[Record]) -> str:
    """A progress summary of one run: the first latency and headline load, or the memory."""
    parts: list[str] = []
    for record in records:
        result, label = record.result or {}, step_label(record.step)
        if record.error:
            parts.append(f"{label} {_size(record.step.get('payload', 0))}: ERROR")
        elif "p50_us" in result and not any("µs" in part for part in parts):
            same = result.get("same_cpu")
            where = "" if same is None else f" ({same:.0%} same CPU)"
            parts.append(f"p50 {result['p50_us']:.1f}µs p99 {result['p99_us']:.1f}µs{where}")
        elif label == _HEADLINE_LOAD and not any("/s" in part for part in parts):
            parts.append(f"{label} {result['calls_per_s']:,.0f}/s")
            if result.get("client_cpu_us") is not None:
                parts.append(
                    f"(CPU µs/call: client {result['client_cpu_us']:.2f}, server {result['server_cpu_us']:.2f})"
                )
        elif "kib_per_connection" in result:
            parts.append(f"{result['kib_per_connection']:.1f} KiB/conn")
            if result.get("kib_per_call") is not None:
                parts.append(f"{result['kib_per_call']:.2f} KiB/call")
    return "  ".join(parts)
