"""Start a worker process, call it over a Unix socket and over TCP, print what comes back."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import callrt
from callrt import call

from .greeter import Greeter


async def main() -> None:
    sock = os.path.join(tempfile.mkdtemp(prefix="callrt-hello-"), "greeter.sock")
    worker = subprocess.Popen(
        [sys.executable, "-m", "examples.hello.worker", f"unix://{sock}", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        ready = worker.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise SystemExit("the worker did not start")
        for endpoint in ready[1:]:
            async with call.connect(call.ConstantResolver([endpoint])) as conn:
                greeter = conn.stub(Greeter)
                greeting = await greeter.greet("world")
                total = await greeter.add(40, b=2)
                print(f"{endpoint:<40} {greeting.text} (worker pid {greeting.served_by_pid}), 40 + 2 = {total}")
    finally:
        worker.terminate()
        print("worker exited with", worker.wait(10))


if __name__ == "__main__":
    callrt.run(main)
