"""What several test modules share: backend parameters and short scratch directories."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# For tests about the asyncio shell (an asyncio Protocol), which trio never runs.
ASYNCIO_ONLY = [
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
]
ALL_BACKENDS = [*ASYNCIO_ONLY, pytest.param(("trio", {}), id="trio")]


def short_tempdir() -> Iterator[Path]:
    """A fresh directory, removed afterwards; short on purpose: a Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="crt", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def rss_kib(pid: int) -> int:
    """A process's resident memory, KiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")
