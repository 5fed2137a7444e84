"""The SDK's CPU per span (start + end, six attributes, BatchSpanProcessor) with the default sampler and with
ParentBased(TraceIdRatioBased(0.01)), where nearly every span is not sampled. python bench/results/otel-sampled.py"""
import time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
class E(SpanExporter):
    def export(self, spans): return SpanExportResult.SUCCESS
attrs = {"rpc.system": "callrt", "rpc.service": "bench.Echo", "rpc.method": "echo", "server.address": "127.0.0.1", "server.port": 9000, "network.transport": "tcp"}
for name, sampler in (("always_on", None), ("ratio 0.01", ParentBased(TraceIdRatioBased(0.01)))):
    p = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    p.add_span_processor(BatchSpanProcessor(E()))
    t = p.get_tracer("x")
    N = 20000; best = 1e9
    for _ in range(5):
        s0 = time.process_time()
        for _ in range(N):
            t.start_span("bench.Echo/echo", kind=SpanKind.CLIENT, attributes=attrs).end()
        best = min(best, (time.process_time() - s0) / N * 1e6)
    print(f"{name}: {best:.2f} µs per span")
