"""Main thread's CPU vs the whole process's, per call, with the SDK (bench.micro paths): what the span processor's and
metric reader's threads take. PYTHONPATH=$PWD taskset -c 1 python bench/results/otel-threads.py client|server"""
import sys, time, threading, anyio
from bench.micro import client_cost, server_cost
from bench.otel import configure
configure("threads")
side = sys.argv[1]; n = 25600
async def go():
    f = (lambda k: client_cost(64, k, b"x" * 32, True)) if side == "client" else (lambda k: server_cost(64, k, b"x" * 32, "echo", 20e-6, True))
    await f(1280)
    p0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
    await f(n)
    p1, t1, w1 = time.process_time(), time.thread_time(), time.perf_counter()
    print(f"{side}: process {(p1-p0)/n*1e6:.2f} µs/call, main thread {(t1-t0)/n*1e6:.2f}, other threads {((p1-p0)-(t1-t0))/n*1e6:.2f}; wall {(w1-w0)/n*1e6:.2f}; threads {[t.name for t in threading.enumerate()]}")
anyio.run(go, backend_options={"use_uvloop": True})
