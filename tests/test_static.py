"""The package type-checks, lints and keeps its layers (mypy, ruff, import-linter), so none drifts unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "mypy", "callrt"],
        [sys.executable, "-m", "ruff", "check", "callrt", "examples", "bench", "tests"],
        [str(Path(sys.executable).parent / "lint-imports")],
    ],
    ids=["mypy", "ruff", "layers"],
)
def test_clean(command: list[str]) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
