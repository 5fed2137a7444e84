"""Decoder-only timings: ``python -m fuzz bench [--against OLD_PROTOCOL_PY]``.

``bench.micro`` measures a whole server or client per call; this isolates
:class:`callrt.protocol.FrameDecoder`, the part the hardening changed, on the
shapes the hot path sees: 64 small requests or responses per read (plain, with
a deadline, with trace context and metadata) and 1 MiB bodies arriving in
chunks. ``--against`` loads another copy of ``protocol.py`` (say the previous
commit's, from ``git show HEAD~1:callrt/protocol.py``) and times both in the
same run, interleaved, so machine noise hits both alike. Best of ``--runs``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import callrt.protocol


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"callrt._protocol_{Path(path).stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(p: Any) -> dict[str, tuple[Callable[[], Any], int]]:
    """name -> (a function doing ``n`` decodes, n)."""
    key = bytes(range(16))
    payload = b"x" * 32
    trace = p.TraceContext(bytes(16) + b"", b"\1" * 8, 1, "vendor=abc")

    def batch(frames: list[Any]) -> bytes:
        return b"".join(p.encode_frame(f) for f in frames)

    plain = batch([p.Request(i + 1, key, payload) for i in range(64)])
    deadline = batch([p.Request(i + 1, key, payload, 5_000_000) for i in range(64)])
    rich = batch(
        [
            p.Request(i + 1, key, payload, 5_000_000, trace, (("tenant", "t1"), ("user", "ann")), "shop.Cart", 42)
            for i in range(64)
        ]
    )
    responses = batch([p.Response(i + 1, payload) for i in range(64)])
    big = 1 << 20
    big_response = p.encode_frame(p.Response(1, b"y" * big))
    big_request = p.encode_frame(p.Request(1, key, b"z" * big))
    big4 = p.encode_frame(p.Response(1, b"w" * (4 * big)))

    def per_read(data: bytes, reads: int) -> Callable[[], Any]:
        def run() -> Any:
            d = p.FrameDecoder(version=1)
            for _ in range(reads):
                d.receive_data(data)
                d.frames()

        return run

    def chunked(data: bytes, chunk: int, reps: int, keep: int = 0) -> Callable[[], Any]:
        """``reps`` copies of ``data`` in reads of ``chunk`` bytes; the last ``keep`` frames stay alive.

        Keeping frames alive is what a server or client under load does (a handler holds its
        arguments, a caller its result), and it changes how the allocator can grow a buffer.
        """
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]

        def run() -> Any:
            d = p.FrameDecoder(version=1)
            alive: list[Any] = []
            for _ in range(reps):
                for piece in pieces:
                    d.receive_data(bytes(piece))  # a fresh bytes per read, as a transport gives
                    while d.more or d.buffered:
                        frames = d.frames()
                        if not frames:
                            break
                        if keep:
                            alive = [*alive[-keep + 1 :], *frames]

        return run

    reads = 200
    return {
        "64 plain requests per read (per frame)": (per_read(plain, reads), reads * 64),
        "64 requests with a deadline per read (per frame)": (per_read(deadline, reads), reads * 64),
        "64 requests, trace+metadata+caller+shard (per frame)": (per_read(rich, reads), reads * 64),
        "64 responses per read (per frame)": (per_read(responses, reads), reads * 64),
        "1 MiB response in 256 KiB reads (per frame)": (chunked(big_response, 256 << 10, 20), 20),
        "1 MiB response in 64 KiB reads (per frame)": (chunked(big_response, 64 << 10, 20), 20),
        "1 MiB request in 256 KiB reads (per frame)": (chunked(big_request, 256 << 10, 20), 20),
        "1 MiB requests in 64 KiB reads, 16 kept alive (per frame)": (chunked(big_request, 64 << 10, 40, 16), 40),
        "1 MiB responses in 64 KiB reads, 16 kept alive (per frame)": (chunked(big_response, 64 << 10, 40, 16), 40),
        "4 MiB responses in 256 KiB reads, 8 kept alive (per frame)": (chunked(big4, 256 << 10, 16, 8), 16),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fuzz bench", description=__doc__.splitlines()[0])
    parser.add_argument("--against", action="append", default=[], help="another protocol.py to time in the same run")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    modules = {Path(path).stem: load(path) for path in args.against}
    modules["now"] = callrt.protocol
    table = {label: cases(m) for label, m in modules.items()}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.runs):
        for label, fns in table.items():
            for name, (fn, n) in fns.items():
                start = time.perf_counter()
                fn()
                took = (time.perf_counter() - start) / n
                best[label, name] = min(best.get((label, name), took), took)
    labels = list(modules)
    print("| decoder case | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name in table["now"]:
        print(f"| {name} | " + " | ".join(f"{best[label, name] * 1e6:.3f} µs" for label in labels) + " |")


if __name__ == "__main__":
    main()
