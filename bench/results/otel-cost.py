"""CPU µs per call of bench.micro's client and server paths (64 in flight, deadline): with the SDK (bench/otel.py), tracing
only, metrics only, or none. From the tree to measure, on one CPU:

    PYTHONPATH=$PWD taskset -c 1 python bench/results/otel-cost.py sdk|trace|metrics|nosdk [runs] [calls]

Best of ``runs``; NOGC=1 runs it with the garbage collector off."""
import sys
import anyio
import callrt
from bench.micro import client_cost, server_cost
mode = sys.argv[1]
import gc, os
if os.environ.get("NOGC"): gc.disable()
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
calls = int(sys.argv[3]) if len(sys.argv) > 3 else 12800
if mode == "sdk":
    from bench.otel import configure
    configure("cost")
elif mode in ("trace", "metrics"):
    from bench.otel import configure
    from opentelemetry import trace, metrics
    if mode == "trace":
        metrics.set_meter_provider = lambda p: None
    else:
        trace.set_tracer_provider = lambda p: None
    configure("cost")
def run(fn, *a):
    return anyio.run(fn, *a, backend_options={"use_uvloop": True})
c = min(run(client_cost, 64, calls, b"x" * 32, True) for _ in range(runs))
s = min(run(server_cost, 64, calls, b"x" * 32, "echo", 20e-6, True) for _ in range(runs))
a = min(run(server_cost, 64, calls, b"x" * 32, "aecho", 20e-6, True) for _ in range(runs))
print(f"{callrt.__file__.split('/callrt/')[0]} {mode}: client {c*1e6:.2f}  server(@inline) {s*1e6:.2f}  server(async) {a*1e6:.2f} µs/call")
