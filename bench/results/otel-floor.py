"""The OpenTelemetry SDK's own CPU per operation, in isolation, in the shapes callrt uses (bench/otel.py's set-up).

PYTHONPATH=$PWD taskset -c 1 python bench/results/otel-floor.py [N]: best of 7 runs of N operations each, time.process_time(); no callrt code runs.
"""
import sys, time
from opentelemetry import context, metrics, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from bench.otel import configure
configure("floor")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
tracer = trace.get_tracer_provider().get_tracer("floor")  # the SDK's tracer, not the API's proxy
meter = metrics.get_meter_provider().get_meter("floor")
hist = meter.create_histogram("h", unit="ms")
base = {"rpc.system": "callrt", "rpc.service": "bench.Echo", "rpc.method": "echo"}
client6 = {**base, "server.address": "127.0.0.1", "server.port": 9000, "network.transport": "tcp"}
server4 = {**base, "network.transport": "tcp"}
server5 = {**server4, "client.address": "127.0.0.1:40000"}
NO_SPAN = context.Context()
remote = trace.set_span_in_context(NonRecordingSpan(SpanContext(0x1234, 0x5678, True, TraceFlags(1))))
sampled = trace.set_span_in_context(tracer.start_span("parent"), NO_SPAN)

def client_span():
    for _ in range(N):
        s = tracer.start_span("bench.Echo/echo", kind=SpanKind.CLIENT, attributes=client6, start_time=time.time_ns())
        s.get_span_context()
        s.end()
def server_span():
    for _ in range(N):
        s = tracer.start_span("bench.Echo/echo", context=remote, kind=SpanKind.SERVER, attributes=server5)
        t = context.attach(trace.set_span_in_context(s, remote))
        s.end()
        context.detach(t)
def hist_client_exemplar():
    for _ in range(N):
        hist.record(1.5, client6, sampled)
def hist_client():
    for _ in range(N):
        hist.record(1.5, client6, NO_SPAN)
def hist_server_exemplar():
    for _ in range(N):
        hist.record(1.5, server4, sampled)
def hist_server():
    for _ in range(N):
        hist.record(1.5, server4, NO_SPAN)
def hist_no_attributes():
    for _ in range(N):
        hist.record(1.5, None, NO_SPAN)
def best(f):
    runs = []
    for _ in range(7):
        t = time.process_time(); f(); runs.append((time.process_time() - t) / N * 1e6)
    return min(runs)
r = {f.__name__: best(f) for f in (client_span, server_span, hist_client_exemplar, hist_client, hist_server_exemplar, hist_server, hist_no_attributes)}
for k, v in r.items():
    print(f"{k:24s} {v:6.2f} µs")
c = r["client_span"] + r["hist_client_exemplar"] + r["hist_client"]
s = r["server_span"] + r["hist_server_exemplar"] + 2 * r["hist_server"]
print(f"floor per call: client {c:.2f} µs (span + duration with exemplar + request size), "
      f"server {s:.2f} µs (span + duration with exemplar + request and response sizes), total {c + s:.2f} µs")
