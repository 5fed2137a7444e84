"""Per-call CPU of callrt's hot paths, without sockets: ``python -m bench.micro``.

Each side runs in this one process against a fake transport, so the figures
are the Python work callrt does per call, free of the kernel and of the
scheduler's placement of two processes (the noise that dominates the
end-to-end bench on a 2-core VM):

- client: a stub call through ``Connection`` with K calls in flight; the fake
  transport answers every request it is given, one loop iteration later, in
  one ``data_received`` per write;
- server: batches of K request frames fed to ``ServerProtocol.data_received``,
  replies collected by the fake transport; sync and async handlers.

Each figure is the best of several runs of many calls (best, not median: a
fake transport has no I/O noise left, only interference, which only adds).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

import anyio
import msgspec

from bench.systems.callrt_rt import Echo
from callrt import call
from callrt.protocol import (
    HEADER_SIZE,
    FrameKind,
    Hello,
    HelloReply,
    Request,
    encode_frame,
    encode_hello_reply,
    encode_response_header,
)

_HEADER = struct.Struct("<IBQ")


class _AnsweringTransport(asyncio.Transport):
    """Answers each written request with the same canned result."""

    result = msgspec.msgpack.encode(b"")

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # Only the headers are read, so that the client's figure is mostly the client's work.
        out, pos, result = [], 0, self.result
        while pos < len(data):
            size, kind, ident = _HEADER.unpack_from(data, pos)
            pos += HEADER_SIZE + size
            if kind == FrameKind.REQUEST:
                out.append(encode_response_header(ident, len(result)) + result)
        if out:
            self._loop.call_soon(self._protocol.data_received, b"".join(out))

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # never pauses

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Sink(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += 1

    def writelines(self, chunks: Any) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass  # the server holds reading past a turn's frames; the measurement feeds it anyway

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # never pauses

    def close(self) -> None:
        pass


@asynccontextmanager
async def _fake_connect(_self: Any, endpoint: call.Endpoint, options: call.ClientOptions) -> AsyncIterator[Any]:
    from callrt.transport._asyncio import ClientProtocol

    protocol = ClientProtocol(endpoint, options)
    transport = _AnsweringTransport(protocol)
    protocol.transport = transport
    protocol.data_received(encode_hello_reply(HelloReply(1, options.max_frame_size)))
    yield protocol.session


async def client_cost(inflight: int, calls: int, payload: bytes, deadline: bool = False) -> float:
    """Seconds of CPU per call on the client side."""
    from callrt.transport import ProtocolTransport

    real = ProtocolTransport.connect
    ProtocolTransport.connect = _fake_connect  # type: ignore[assignment,method-assign]
    _AnsweringTransport.result = msgspec.msgpack.encode(payload)
    try:
        async with call.connect(call.ConstantResolver(["tcp://127.0.0.1:9"])) as conn:
            echo: Any = conn.stub(Echo)
            await echo.echo(payload)
            per_task = calls // inflight

            async def worker() -> None:
                for _ in range(per_task):
                    await echo.echo(payload)

            start = time.process_time()
            # With a deadline, every request carries the time left (and the server reads it).
            with anyio.fail_after(3600) if deadline else nullcontext():
                async with anyio.create_task_group() as tg:
                    for _ in range(inflight):
                        tg.start_soon(worker)
            return (time.process_time() - start) / (per_task * inflight)
    finally:
        ProtocolTransport.connect = real  # type: ignore[method-assign]


async def server_cost(
    inflight: int, calls: int, payload: bytes, method: str, inline: float, deadline: bool = False
) -> float:
    """Seconds of CPU per call on the server side, ``inflight`` requests per read."""
    from callrt.connection.server import Server
    from callrt.server import _handler_map
    from callrt.transport._asyncio import ServerProtocol

    server = Server(_handler_map([Echo()]), call.ServerOptions(inline_handler_duration=inline))
    protocol = ServerProtocol(server)
    sink = _Sink()
    protocol.connection_made(sink)
    protocol.data_received(encode_frame(Hello(1, 1, 1 << 20)))
    key = call.make_method_key("bench.Echo", method)
    args = msgspec.msgpack.encode((payload,))
    time_left = 10_000_000 if deadline else None  # µs
    batches = [
        b"".join(encode_frame(Request(b * inflight + i + 1, key, args, time_left)) for i in range(inflight))
        for b in range(calls // inflight)
    ]
    loop = asyncio.get_running_loop()
    start = time.process_time()
    for batch in batches:
        # Each batch arrives in a loop iteration of its own, as from a socket: the iteration is
        # part of every handler shape's cost, and an async handler's task runs in it.
        loop.call_soon(protocol.data_received, batch)
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    elapsed = time.process_time() - start
    protocol.transport = None
    return elapsed / (len(batches) * inflight)


def best(runs: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=64_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--payload", type=int, default=32)
    args = parser.parse_args()
    payload = b"x" * args.payload

    def run(fn: Callable[..., Any], *fargs: Any) -> float:
        return anyio.run(fn, *fargs, backend_options={"use_uvloop": True})  # type: ignore[no-any-return]

    rows = [
        (f"client, {k} in flight", best(args.runs, lambda k=k: run(client_cost, k, args.calls, payload)))
        for k in (1, 64)
    ]
    cost = best(args.runs, lambda: run(client_cost, 64, args.calls, payload, True))
    rows.append(("client, 64 in flight, with a deadline", cost))
    for method, inline, label in (
        ("echo", 20e-6, "@inline sync handler"),
        ("aecho", 20e-6, "async handler, inline"),
        ("aecho", -1.0, "async handler, task per call"),
    ):
        for k in (1, 64):
            cost = best(args.runs, lambda k=k, m=method, i=inline: run(server_cost, k, args.calls // 4, payload, m, i))
            rows.append((f"server, {label}, {k} per read", cost))
    for method, label in (("echo", "@inline sync handler"), ("aecho", "async handler, inline")):
        cost = best(args.runs, lambda m=method: run(server_cost, 64, args.calls // 4, payload, m, 20e-6, True))
        rows.append((f"server, {label}, 64 per read, with a deadline", cost))
    print(f"| path ({args.payload} B payload, uvloop) | CPU per call |")
    print("|---|---|")
    for label, cost in rows:
        print(f"| {label} | {cost * 1e6:.2f} µs |")


if __name__ == "__main__":
    main()
