"""A real etcd server for tests: started from the system's package on free loopback ports.

``scripts/setup-etcd.sh`` installs the binary. Use :func:`running_etcd`, or
:class:`EtcdServer` directly to stop and restart one in place.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ("EtcdNotInstalled", "EtcdServer", "running_etcd")

START_TIMEOUT = 15.0


class EtcdNotInstalled(RuntimeError):
    """There is no ``etcd`` binary on PATH."""


class EtcdServer:
    """One etcd member with its data in ``data_dir``; :meth:`start` and :meth:`stop` may repeat."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise EtcdNotInstalled("etcd is not installed: run scripts/setup-etcd.sh")
        self._binary = binary
        self._dir = data_dir
        self._client_port = _free_port()
        self._peer_port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self._client_port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self._peer_port}"
        log = open(self._dir / "etcd.log", "ab")  # noqa: SIM115 - the process owns it
        with log:
            self._process = subprocess.Popen(
                [
                    self._binary,
                    "--name=test",
                    f"--data-dir={self._dir / 'data'}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=test={peer}",
                    "--log-outputs=stderr",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd did not start within {START_TIMEOUT} s; its log:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def log(self) -> str:
        return (self._dir / "etcd.log").read_text(errors="replace")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                return b'"health":"true"' in response.read()
        except (OSError, urllib.error.URLError):
            return False


@contextmanager
def running_etcd() -> Iterator[EtcdServer]:
    """A started etcd, stopped and deleted on exit; raises :class:`EtcdNotInstalled` without the binary."""
    with tempfile.TemporaryDirectory(prefix="callrt-etcd-") as tmp:
        server = EtcdServer(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
