"""Per-call instruction counts of bench.micro's hot paths under callgrind (bench/README.md, issue 10).

Run from the root of the tree to measure, with that tree first on PYTHONPATH:

    env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pycache PYTHONHASHSEED=0 PYTHONPATH=$PWD \
      valgrind --tool=callgrind --dump-before=getppid --callgrind-out-file=OUT \
      .venv/bin/python arch-callgrind.py PATH 6400 32000

In one process: a warm-up run of PATH, then a run of N1 calls and one of N2
calls, each between two os.getppid() calls, at which valgrind dumps a profile
part (OUT.1 start-up, OUT.2 warm-up, OUT.3 the N1 run, OUT.4 the N2 run).
Instructions per call = (Ir of OUT.4 - Ir of OUT.3) / (N2 - N1).

Client paths call bench.micro.client_cost as it is (harness included, as in
the earlier sessions). Server paths feed batches of request frames, made by
the tree's own encoder, to ServerProtocol.data_received with bench.micro's
sink transport; every run builds N2 calls' batches, so the encoding cancels
out of the difference. The tree's directory must hold a file TREE naming it.
"""
import asyncio, os, sys
# The venv's editable install maps any callrt.* module missing from this tree to /work/main
# (someone else's working tree): drop that finder, so a missing module is an ImportError.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import anyio, msgspec
import bench.micro as micro
import callrt
from callrt import call

path, n1, n2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
nmax = n = n2
payload = b"x" * 32


async def server(inflight, method, inline, deadline):
    if os.path.isdir(os.path.join(os.path.dirname(callrt.__file__), "connection")):
        from callrt.connection.server import Server      # after e9e2002
    else:
        from callrt.server import Server                  # before
    from callrt.server import _handler_map
    from callrt.transport._asyncio import ServerProtocol
    from callrt.protocol import Hello, Request, encode_frame
    server = Server(_handler_map([micro.Echo()]), call.ServerOptions(inline_handler_duration=inline))
    protocol = ServerProtocol(server)
    sink = micro._Sink()
    protocol.connection_made(sink)
    protocol.data_received(encode_frame(Hello(1, 1, 1 << 20)))
    key = call.make_method_key("bench.Echo", method)
    args = msgspec.msgpack.encode((payload,))
    time_left = 10_000_000 if deadline else None
    batches = [
        b"".join(encode_frame(Request(b * inflight + i + 1, key, args, time_left)) for i in range(inflight))
        for b in range(nmax // inflight)
    ]
    # warm-up batch (ids beyond the measured ones)
    protocol.data_received(b"".join(encode_frame(Request(10**9 + i, key, args, time_left)) for i in range(inflight)))
    await asyncio.sleep(0); await asyncio.sleep(0)
    for batch in batches[: n // inflight]:
        protocol.data_received(batch)
        if method == "aecho":
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    protocol.transport = None
    return sink.written


PATHS = {
    "client1": lambda: micro.client_cost(1, n, payload),
    "client64": lambda: micro.client_cost(64, n, payload),
    "client64d": lambda: micro.client_cost(64, n, payload, True),
    "server1": lambda: server(1, "echo", 20e-6, False),
    "server64": lambda: server(64, "echo", 20e-6, False),
    "server64d": lambda: server(64, "echo", 20e-6, True),
    "server64async": lambda: server(64, "aecho", 20e-6, False),
    "server64task": lambda: server(64, "aecho", -1.0, False),
}

# Warm-up run (first-time imports, specialization), then N1 and N2, each between two
# os.getppid() calls: valgrind --dump-before=getppid writes one profile part per boundary.
for n in (n1, n1, n2):
    os.getppid()
    out = anyio.run(PATHS[path], backend_options={"use_uvloop": True})
os.getppid()
tree = os.path.dirname(os.path.dirname(callrt.__file__))
stray = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] in ("callrt", "bench") and getattr(m, "__file__", None) and not m.__file__.startswith(tree + "/")]
assert not stray, stray
print(path, n, out, callrt.__file__, open("TREE").read().strip(), file=sys.stderr)
