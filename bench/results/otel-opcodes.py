"""Bytecodes per call by function with the OpenTelemetry SDK configured (bench/otel.py) or not, sys.settrace opcode events.

From the tree to measure: PYTHONPATH=$PWD python bench/results/otel-opcodes.py client|server sdk|nosdk [N]
(bench.micro paths: 64 in flight, every request with a deadline; the server's handler @inline)."""
import os
import sys
from collections import Counter
import anyio
from bench.micro import client_cost, server_cost
side, mode = sys.argv[1], sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 1280
if mode == "sdk":
    from bench.otel import configure
    configure(side)
counts = Counter()
def tracer(frame, event, arg):
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False
    if event == "opcode":
        c = frame.f_code
        counts[f"{c.co_filename.split('/site-packages/')[-1].replace(os.getcwd() + '/', '')}:{c.co_name}"] += 1
    return tracer
async def go():
    f = (lambda n: client_cost(64, n, b"x" * 32, True)) if side == "client" else (lambda n: server_cost(64, n, b"x" * 32, "echo", 20e-6, True))
    await f(256)
    counts.clear()
    sys.settrace(tracer)
    await f(N)
    sys.settrace(None)
anyio.run(go, backend_options={"use_uvloop": True})
tot = sum(counts.values())
print(f"{side} {mode}: {tot / N:.0f} bytecodes per call")
mods = Counter()
for f, c in counts.items():
    mods["/".join(f.split("/")[:3]) if f.startswith("opentelemetry") else f.split(":")[0]] += c
for f, c in mods.most_common(14):
    print(f"{c / N:8.1f}  {f}")
print("--")
for f, c in counts.most_common(40):
    print(f"{c / N:8.1f}  {f}")
