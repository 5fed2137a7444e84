"""Small pieces shared by the orchestrator and both process entry points."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

import anyio

__all__ = (
    "LOOPS",
    "PINS",
    "Address",
    "Loop",
    "cpu_seconds",
    "free_tcp_port",
    "last_cpu",
    "probe",
    "read_rss_kib",
    "run_on_loop",
    "stop_process",
    "wait_ready",
)

Loop = Literal["uvloop", "asyncio", "trio"]
LOOPS: tuple[Loop, ...] = get_args(Loop)

#: ``--pin``: the CPUs of the server and of the client process (None: wherever the scheduler likes).
PINS: dict[str, tuple[set[int] | None, set[int] | None]] = {
    "none": (None, None),
    "same": ({0}, {0}),
    "split": ({0}, {1}),
}


@dataclass(frozen=True, slots=True)
class Address:
    """Where a server listens: ``tcp://host:port`` or ``unix:///path``."""

    url: str

    @property
    def is_unix(self) -> bool:
        return self.url.startswith("unix://")

    @property
    def path(self) -> str:
        """The socket path of a Unix address."""
        assert self.is_unix, self.url
        return self.url.removeprefix("unix://")

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port of a TCP address."""
        assert self.url.startswith("tcp://"), self.url
        host, _, port = self.url.removeprefix("tcp://").rpartition(":")
        return host, int(port)

    @classmethod
    def tcp(cls, host: str, port: int) -> Address:
        return cls(f"tcp://{host}:{port}")

    @classmethod
    def unix(cls, path: str) -> Address:
        return cls(f"unix://{path}")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def probe(address: Address) -> bool:
    """Whether something accepts connections at ``address`` (connects and closes at once)."""
    family = socket.AF_UNIX if address.is_unix else socket.AF_INET
    target: str | tuple[str, int] = address.path if address.is_unix else address.host_port
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(target)
        except OSError:
            return False
        return True


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def read_rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def _stat_field(pid: int, number: int) -> int:
    """Field ``number`` (numbered as in proc(5), from 3 on) of ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()  # the command name may hold spaces
    return int(fields[number - 3])


def last_cpu(pid: int) -> int:
    """The CPU process ``pid``'s main thread last ran on (field 39 of ``/proc/PID/stat``)."""
    return _stat_field(pid, 39)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used (fields 14 and 15 of ``/proc/PID/stat``)."""
    return (_stat_field(pid, 14) + _stat_field(pid, 15)) / _CLOCK_TICKS


def run_on_loop(main: Callable[[], Awaitable[object]], loop: Loop) -> None:
    """Run ``main`` on the named event loop (through anyio, so trio works too)."""
    if loop == "trio":
        anyio.run(main, backend="trio")
    else:
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": loop == "uvloop"})


def wait_ready(server: subprocess.Popen[str], address: Address, timeout: float) -> bool:
    """Whether ``server`` accepts connections on ``address`` within ``timeout`` seconds (False once it exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        if probe(address):
            return True
        time.sleep(0.02)
    return False


def stop_process(process: subprocess.Popen[Any], grace: float = 5) -> None:
    """SIGTERM ``process`` if it still runs; SIGKILL it after ``grace`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Processes:
    """The server and client processes of a bench run: started from the repository, pinned, and always stopped.

    Each runs with the repository first on ``PYTHONPATH`` and its working directory there. One
    still running when its block ends, or at :meth:`close`, is stopped (:func:`stop_process`).
    """

    def __init__(self, repo: Path, verbose: bool, grace: float = 5) -> None:
        self._repo = repo
        self._verbose = verbose
        self._grace = grace
        self._live: list[subprocess.Popen[str]] = []
        self._env = os.environ | {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
        }

    @contextmanager
    def start(
        self, command: list[str], log: IO[str], cpus: set[int] | None, stdout: int | IO[str] = subprocess.DEVNULL
    ) -> Iterator[subprocess.Popen[str]]:
        """``command`` running, its stderr to ``log``, on ``cpus`` (None: anywhere) for the block."""
        if self._verbose:
            print("    $ " + " ".join(command[:12]), file=sys.stderr)
        process = subprocess.Popen(
            command, stdout=stdout, stderr=log, stdin=subprocess.DEVNULL, cwd=self._repo, env=self._env, text=True
        )
        self._live.append(process)
        if cpus is not None:  # before the interpreter has started any thread
            os.sched_setaffinity(process.pid, cpus)
        try:
            yield process
        finally:
            stop_process(process, self._grace)
            self._live.remove(process)

    def close(self) -> None:
        for process in self._live:
            stop_process(process, self._grace)
        self._live.clear()
