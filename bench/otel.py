"""The OpenTelemetry SDK set-up that ``--otel-sdk`` gives a bench process (callrt's and grpc.aio's alike).

What an application exporting telemetry would configure: a ``TracerProvider``
with a ``BatchSpanProcessor`` and a ``MeterProvider`` with a
``PeriodicExportingMetricReader``, both with the SDK's default settings. The
exporters are in memory and keep counts only (keeping every span would grow
the process over a run). So that a run shows the instrumentation did run, each
process writes one line to stderr (the bench's per-job log) at its first span
export, naming the span kinds and names it got, and the counts at exit
(a server is stopped by SIGTERM, which skips the exit report; SIGINT does not).
"""

from __future__ import annotations

import atexit
import sys
from collections import Counter
from typing import Any

__all__ = ("configure",)

_configured: list[str] = []


def configure(role: str) -> None:
    """Set the SDK's tracer and meter providers in this process; ``role`` names it in the stderr lines.

    Once per process: a client opens a connection per step, and each further set-up would be
    refused by the API yet start its processor's and reader's threads.
    """
    if _configured:
        return
    _configured.append(role)
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Spans(SpanExporter):
        exported = 0

        def export(self, spans: Any) -> SpanExportResult:
            if not self.exported:
                batch: list[ReadableSpan] = list(spans)
                kinds = Counter(str(span.kind.name) for span in batch)
                names = Counter(span.name for span in batch)
                print(
                    f"otel-sdk {role}: first export, {len(batch)} spans: {dict(kinds)} {dict(names)}", file=sys.stderr
                )
            self.exported += len(spans)
            return SpanExportResult.SUCCESS

    class Metrics(MetricExporter):
        def __init__(self) -> None:
            super().__init__()
            self.exports = 0
            self.last: MetricsData | None = None

        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            self.exports += 1
            self.last = metrics_data
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    spans, readings = Spans(), Metrics()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    meter_provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(readings)])
    metrics.set_meter_provider(meter_provider)

    @atexit.register
    def _report() -> None:  # registered after the SDK's own shutdown hooks, so it runs before them
        tracer_provider.force_flush()
        meter_provider.force_flush()
        names = sorted(
            metric.name
            for data in ([] if readings.last is None else readings.last.resource_metrics)
            for scope in data.scope_metrics
            for metric in scope.metrics
        )
        print(f"otel-sdk {role}: {spans.exported} spans exported; metrics {names}", file=sys.stderr)
