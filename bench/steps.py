"""What a client process is asked to measure: steps, passed as JSON on its command line."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = (
    "LatencyStep",
    "MemoryStep",
    "Step",
    "ThroughputStep",
    "decode_steps",
    "encode_steps",
    "step_from_dict",
    "step_to_dict",
)


@dataclass(frozen=True, slots=True)
class LatencyStep:
    """Sequential calls: p50/p99/p99.9 over at most ``max_calls`` calls or ``duration`` s."""

    kind: ClassVar[str] = "latency"
    payload: int
    warmup: float
    duration: float
    max_calls: int

    @property
    def budget(self) -> float:
        return self.warmup + self.duration


@dataclass(frozen=True, slots=True)
class ThroughputStep:
    """``inflight`` concurrent callers on each of ``connections`` connections."""

    kind: ClassVar[str] = "throughput"
    payload: int
    inflight: int
    connections: int
    warmup: float
    duration: float

    @property
    def budget(self) -> float:
        return self.warmup + self.duration + 0.005 * self.connections


@dataclass(frozen=True, slots=True)
class MemoryStep:
    """Server RSS per idle connection and per call parked in ``hold``."""

    kind: ClassVar[str] = "memory"
    connections: int
    held_calls: int
    hold_ms: int
    settle: float

    @property
    def budget(self) -> float:
        return 3 * self.settle + self.hold_ms / 1000 + 0.002 * self.connections


Step = LatencyStep | ThroughputStep | MemoryStep
_KINDS: dict[str, type[Step]] = {cls.kind: cls for cls in (LatencyStep, ThroughputStep, MemoryStep)}


def step_to_dict(step: Step) -> dict[str, Any]:
    return {"kind": step.kind, **dataclasses.asdict(step)}


def step_from_dict(data: dict[str, Any]) -> Step:
    fields = dict(data)
    return _KINDS[fields.pop("kind")](**fields)


def encode_steps(steps: list[Step]) -> str:
    return json.dumps([step_to_dict(step) for step in steps])


def decode_steps(text: str) -> list[Step]:
    return [step_from_dict(item) for item in json.loads(text)]
