"""CPU of entering and leaving an anyio CancelScope under uvloop, with and without a deadline (bench/README.md, issue 12).

What every async call with a deadline pays on the server, so that anyio code in its handler sees the deadline.
"""
import anyio, time, math
async def main():
    n = 100_000
    now = anyio.current_time()
    t = time.process_time()
    for _ in range(n):
        with anyio.CancelScope(deadline=now + 10):
            pass
    a = (time.process_time() - t) / n
    t = time.process_time()
    for _ in range(n):
        with anyio.CancelScope():
            pass
    b = (time.process_time() - t) / n
    print(f"anyio.CancelScope(deadline=...) enter+exit: {a*1e6:.2f} µs; without a deadline: {b*1e6:.2f} µs")
anyio.run(main, backend_options={"use_uvloop": True})
