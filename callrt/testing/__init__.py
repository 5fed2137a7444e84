"""callrt's testing kit: real worker processes for tests, shipped for users' tests too.

:class:`WorkerProcess` starts ``python -m callrt.testing.worker`` serving the
components you name (``"package.module:Class"``) and tells you the endpoint it
bound. Stop it gracefully (SIGTERM: the server drains) or kill it (SIGKILL).
:class:`ManualResolver` is a resolver the test drives: set endpoints, inject errors.
:class:`FaultProxy` sits between a client and a server and delays, drops, corrupts, stalls or resets their bytes.

Without sockets: serve and call on ``memory://NAME`` endpoints (the in-memory
transport, same behaviour as TCP: deadlines, cancellation, errors, goaway),
in one event loop, on every backend and on trio's ``MockClock``;
:func:`raw_listener` stands in for a misbehaving server there.
:func:`~callrt.testing.conformance.check_transport` is the suite every
transport passes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from ..endpoints import Endpoint, parse_endpoint
from ..transport.memory import raw_listener
from ._options import server_options
from ._resolver import ManualResolver, ResolverError
from .conformance import check_transport
from .proxy import Direction, FaultProxy, Faults, Pipe, ProxyConnection

__all__ = (
    "check_transport",
    "raw_listener",
    "Direction",
    "FaultProxy",
    "Faults",
    "ManualResolver",
    "Pipe",
    "ProxyConnection",
    "ResolverError",
    "WorkerProcess",
)


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the parent dies (Linux), so no worker outlives its test run."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerProcess:
    """A server in a child process. Use as a context manager, or call :meth:`start` / :meth:`stop`.

    :param address: where to listen, e.g. ``"tcp://127.0.0.1:0"`` or ``"unix:///tmp/x.sock"``.
    :param components: ``"module:Class"`` names, each instantiated with no arguments.
    :param options: keyword arguments for :class:`ServerOptions` (JSON-serializable), and
        ``tls_cert``, ``tls_key``, ``tls_client_ca`` (PEM paths) and ``access`` (AllowList
        rules): see ``callrt.testing.worker``.
    :param backend: ``"asyncio"`` (uvloop when installed) or ``"trio"``.
    """

    def __init__(
        self,
        address: str,
        components: Sequence[str],
        *,
        options: dict[str, Any] | None = None,
        backend: str = "asyncio",
        env: dict[str, str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.address = address
        self.components = list(components)
        self.options = options or {}
        server_options(self.options)  # fail here, not in the child, on a bad option
        self.backend = backend
        self.env = env
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint: Endpoint | None = None

    def start(self) -> Endpoint:
        cmd = [
            sys.executable,
            "-m",
            "callrt.testing.worker",
            "--address",
            self.address,
            "--backend",
            self.backend,
            "--options",
            json.dumps(self.options),
            *self.components,
        ]
        env = {**os.environ, **(self.env or {})}
        env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        # The child prints one line once it is serving; a dead child gives EOF instead.
        # Wait for it with a timeout: a child that hangs before printing must not hang the test.
        ready, _, _ = select.select([self.proc.stdout], [], [], self.start_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError(f"worker did not start within {self.start_timeout}s: {line!r}")
        self.endpoint = parse_endpoint(line.split(" ", 1)[1].strip())
        return self.endpoint

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the worker drains and exits); SIGKILL if it has not exited within ``timeout``."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a goaway."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> WorkerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
