"""Start a worker process, call it over a Unix socket and over TCP, print what comes back."""

from __future__ import annotations

import os
import sys
import tempfile

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

import callrt
from callrt import call

from .greeter import GreeterAPI


async def main() -> None:
    sock = os.path.join(tempfile.mkdtemp(prefix="callrt-hello-"), "greeter.sock")
    command = [sys.executable, "-m", "examples.hello.worker", f"unix://{sock}", "tcp://127.0.0.1:0"]
    async with await anyio.open_process(command, stderr=None) as worker:
        assert worker.stdout is not None
        ready = (await BufferedByteReceiveStream(worker.stdout).receive_until(b"\n", 4096)).decode().split()
        if not ready or ready[0] != "READY":
            raise SystemExit("the worker did not start")
        for endpoint in ready[1:]:
            async with call.connect(call.ConstantResolver([endpoint])) as conn:
                greeter = conn.stub(GreeterAPI)
                greeting = await greeter.greet("world")
                total = await greeter.add(40, b=2)
                print(f"{endpoint:<40} {greeting.text} (worker pid {greeting.served_by_pid}), 40 + 2 = {total}")
        worker.terminate()  # the worker drains and exits
        print("worker exited with", await worker.wait())


if __name__ == "__main__":
    callrt.run(main)
