"""Client CPU per call with no SDK set globally, with and without a span of a private provider current: the trace
context's own cost (client_trace + the request header). PYTHONPATH=$PWD taskset -c 1 python bench/results/otel-propagation.py"""
import time, anyio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry import trace
from bench.micro import client_cost
tracer = TracerProvider().get_tracer("private")
async def go():
    for label, ctx in (("no context", None), ("under a span", True)):
        best = 1e9
        for _ in range(3):
            if ctx:
                with tracer.start_as_current_span("outer"):
                    per = await client_cost(64, 12800, b"x" * 32, True)
            else:
                per = await client_cost(64, 12800, b"x" * 32, True)
            best = min(best, per)
        print(f"{label}: client {best*1e6:.2f} µs/call")
anyio.run(go, backend_options={"use_uvloop": True})
