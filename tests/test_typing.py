"""Stubs type-check: mypy (strict, pyproject's config) and basedpyright on the examples and tests/typing/.

``tests/typing/stubs_ok.py`` must pass both checkers; in ``stubs_errors.py``
each line marked ``# expect-error`` must be an error in both, and no other
line may be. Both checkers must also find callrt from a directory outside the
repository, as a user's project would with ``make``'s editable install.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
BASEDPYRIGHT = Path(sys.executable).parent / "basedpyright"

pytestmark = pytest.mark.timeout(300)


def expected_errors(path: Path) -> set[int]:
    lines = path.read_text().splitlines()
    return {n for n, line in enumerate(lines, 1) if re.search(r"# expect-error(:|$)", line)}


def mypy(*args: str, cwd: Path = ROOT) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "mypy", *args], cwd=cwd, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def mypy_errors(output: str, path: Path) -> set[int]:
    return {int(n) for n in re.findall(rf"^(?:.*/)?{re.escape(path.name)}:(\d+): error:", output, re.MULTILINE)}


def basedpyright(*args: str, cwd: Path = ROOT) -> dict[str, object]:
    if not BASEDPYRIGHT.exists():
        pytest.fail(f"{BASEDPYRIGHT} is missing: install the test extra (pip install -e '.[test]')")
    command = [str(BASEDPYRIGHT), "--outputjson", "--pythonpath", sys.executable, *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    report: dict[str, object] = json.loads(done.stdout)
    return report


def pyright_errors(report: dict[str, object]) -> list[tuple[str, int, str]]:
    diagnostics = report["generalDiagnostics"]
    assert isinstance(diagnostics, list)
    return [(d["file"], d["range"]["start"]["line"] + 1, d["message"]) for d in diagnostics if d["severity"] == "error"]


def test_mypy_accepts_callrt_the_examples_and_stubs_ok() -> None:
    status, output = mypy()  # pyproject's files: callrt, examples, tests/typing/stubs_ok.py
    assert status == 0, output
    assert "stubs_ok.py" in " ".join(_mypy_files()), "stubs_ok.py left out of mypy's files"


def _mypy_files() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    files: list[str] = config["tool"]["mypy"]["files"]
    assert {"callrt", "examples"} <= set(files)
    return files


def test_mypy_reports_exactly_the_expected_errors() -> None:
    path = TYPING / "stubs_errors.py"
    _, output = mypy(str(path.relative_to(ROOT)))
    assert mypy_errors(output, path) == expected_errors(path), output


def test_basedpyright_accepts_callrt_the_examples_and_stubs_ok() -> None:
    report = basedpyright()  # pyproject's include: callrt, examples, tests/typing/stubs_ok.py
    assert pyright_errors(report) == []
    summary = report["summary"]
    assert isinstance(summary, dict) and summary["filesAnalyzed"] > 40


def test_basedpyright_reports_exactly_the_expected_errors() -> None:
    path = TYPING / "stubs_errors.py"
    errors = pyright_errors(basedpyright(str(path)))
    assert {line for _, line, _ in errors} == expected_errors(path), errors
    assert {file for file, _, _ in errors} == {str(path)}


def test_both_checkers_find_callrt_outside_the_repository(tmp_path: Path) -> None:
    # A user's project: no pyproject of ours, callrt found only through the installed package.
    (tmp_path / "app.py").write_text(
        "from typing import Protocol\n"
        "from callrt import call, interface\n\n\n"
        "@interface(name='app.Echo')\n"
        "class EchoAPI(Protocol):\n"
        "    async def echo(self, text: str) -> str: ...\n\n\n"
        "async def main(client: call.Client) -> str:\n"
        "    return await client.stub(EchoAPI).echo('hi')\n"
    )
    status, output = mypy("--strict", "app.py", cwd=tmp_path)
    assert status == 0, output
    report = basedpyright("app.py", cwd=tmp_path)
    assert pyright_errors(report) == []
    summary = report["summary"]
    assert isinstance(summary, dict) and summary["filesAnalyzed"] == 1
