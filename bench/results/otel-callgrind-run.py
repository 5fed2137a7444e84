"""One process: SDK (bench/otel.py) or not, then N calls of bench.micro's client or server path: cgrun.py client|server|aserver sdk|nosdk N"""
import sys
import anyio
from bench.micro import client_cost, server_cost
side, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "sdk":
    from bench.otel import configure
    configure("cg")
def run(k):
    if side == "client":
        return client_cost(64, k, b"x" * 32, True)
    return server_cost(64, k, b"x" * 32, "echo" if side == "server" else "aecho", 20e-6, True)
async def go():
    await run(640)  # warm-up: first calls build caches, the SDK's aggregations
    await run(n)
anyio.run(go, backend_options={"use_uvloop": True})
