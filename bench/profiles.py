"""The profiles (quick: the issue-2 bar; full: everything; tls: mutual TLS; otel: the SDK) and the variants measured.

A *variant* is a system plus flags (``raw-coalesced`` is ``raw --coalesce``);
a *job* is a variant on one transport and loop, run as one server process and
one client process that performs a list of steps.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from bench.common import Loop
from bench.steps import LatencyStep, MemoryStep, Step, ThroughputStep

__all__ = (
    "DEFAULT_VARIANTS",
    "OTEL_VARIANTS",
    "PROFILES",
    "TLS_DIR",
    "TLS_VARIANTS",
    "Job",
    "Profile",
    "Variant",
    "parse_variant",
)

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Variant:
    """A system with flags, shown as ``label``; both processes get ``argv``."""

    label: str
    system: str
    argv: tuple[str, ...] = ()


DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("raw", "raw"),
    Variant("raw-coalesced", "raw", ("--coalesce",)),
    Variant("grpc", "grpc"),
    Variant("callrt", "callrt"),
)


#: In a variant's flags, the directory of certificates the orchestrator makes for the run (bench/tls.py).
TLS_DIR = "{tls_dir}"

TLS_VARIANTS: tuple[Variant, ...] = (
    Variant("raw-coalesced", "raw", ("--coalesce",)),
    Variant("raw-coalesced-tls", "raw", ("--coalesce", "--tls-dir", TLS_DIR)),
    Variant("callrt", "callrt"),
    Variant("callrt-tls", "callrt", ("--tls-dir", TLS_DIR)),
    Variant("grpc", "grpc"),
    Variant("grpc-tls", "grpc", ("--tls-dir", TLS_DIR)),
)


# Telemetry's cost (issue 13): each system with the OpenTelemetry SDK configured in both processes
# (bench/otel.py; grpc.aio also instrumented by opentelemetry-instrumentation-grpc), and without.
OTEL_VARIANTS: tuple[Variant, ...] = (
    Variant("callrt", "callrt"),
    Variant("callrt-otel", "callrt", ("--otel-sdk",)),
    Variant("grpc", "grpc"),
    Variant("grpc-otel", "grpc", ("--otel-sdk",)),
)


def parse_variant(text: str) -> Variant:
    """``LABEL=SYSTEM[:FLAGS]``, e.g. ``callrt-task=callrt:--inline-handler-duration=-1``."""
    label, sep, rest = text.partition("=")
    if not sep or not label:
        raise ValueError(f"expected LABEL=SYSTEM[:FLAGS], got {text!r}")
    system, _, flags = rest.partition(":")
    return Variant(label, system, tuple(shlex.split(flags)))


@dataclass(frozen=True, slots=True)
class Job:
    """One server process and one client process: a variant on a transport and loop."""

    variant: Variant
    transport: str
    loop: Loop
    steps: tuple[Step, ...]

    @property
    def budget(self) -> float:
        """Seconds the client should need, without process start-up."""
        return sum(step.budget for step in self.steps)


@dataclass(frozen=True, slots=True)
class Profile:
    """Which cells to measure and for how long."""

    name: str
    payloads: tuple[int, ...]
    transports: tuple[str, ...]
    loops: Mapping[str, tuple[Loop, ...]]
    latency: tuple[float, float, int]  # warm-up s, duration s, max calls
    throughput: tuple[tuple[int, int], ...]  # (connections, in flight per connection)
    throughput_timing: tuple[float, float]  # warm-up s, duration s
    memory: MemoryStep | None = None
    memory_transports: tuple[str, ...] = ("tcp",)
    memory_loops: tuple[Loop, ...] = ("uvloop", "trio")
    max_inflight_bytes: int = 64 * MIB
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS  # what runs without --systems / --variant

    def perf_steps(self) -> tuple[Step, ...]:
        warmup, duration, max_calls = self.latency
        tp_warmup, tp_duration = self.throughput_timing
        steps: list[Step] = []
        for payload in self.payloads:
            steps.append(LatencyStep(payload, warmup, duration, max_calls))
            for connections, inflight in self.throughput:
                if connections * inflight * payload <= self.max_inflight_bytes:
                    steps.append(ThroughputStep(payload, inflight, connections, tp_warmup, tp_duration))
        return tuple(steps)

    def jobs(self, variants: tuple[Variant, ...], loops_of: Mapping[str, tuple[Loop, ...]]) -> list[Job]:
        """Perf jobs then memory jobs; ``loops_of`` maps a system to the loops it supports."""
        jobs: list[Job] = []
        perf = self.perf_steps()
        for variant in variants:
            wanted = self.loops.get(variant.system, ("uvloop",))
            loops = [loop for loop in wanted if loop in loops_of[variant.system]]
            for loop in loops:
                jobs += (Job(variant, transport, loop, perf) for transport in self.transports)
                if self.memory is not None and loop in self.memory_loops:
                    jobs += (Job(variant, t, loop, (self.memory,)) for t in self.memory_transports)
        jobs.sort(key=lambda job: isinstance(job.steps[0], MemoryStep))
        return jobs


QUICK = Profile(
    name="quick",
    payloads=(32,),
    transports=("tcp", "unix"),
    loops={"raw": ("uvloop",), "grpc": ("uvloop",), "callrt": ("uvloop",)},
    latency=(0.3, 1.5, 100_000),
    throughput=((1, 64),),
    throughput_timing=(0.3, 1.5),
)

FULL = Profile(
    name="full",
    payloads=(32, 4 * KIB, 64 * KIB, MIB),
    transports=("tcp", "unix"),
    loops={
        "raw": ("uvloop", "asyncio"),
        "grpc": ("uvloop",),
        "callrt": ("uvloop", "asyncio", "trio"),
    },
    latency=(0.15, 0.6, 100_000),
    throughput=((1, 1), (1, 16), (1, 64), (1, 256), (64, 16)),
    throughput_timing=(0.15, 0.6),
    memory=MemoryStep(connections=1000, held_calls=1000, hold_ms=3000, settle=0.5),
)

# TLS's cost: callrt with and without mutual TLS 1.3, and grpc.aio with and without it, same certificates.
TLS = dataclasses.replace(QUICK, name="tls", transports=("tcp",), variants=TLS_VARIANTS)

# The SDK's cost: callrt and grpc.aio with and without it, on TCP.
OTEL = dataclasses.replace(QUICK, name="otel", transports=("tcp",), variants=OTEL_VARIANTS)

PROFILES: dict[str, Profile] = {profile.name: profile for profile in (QUICK, FULL, TLS, OTEL)}
