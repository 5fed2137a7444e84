"""The documentation site: it builds strictly, and what it shows still matches the code.

``mkdocs build --strict`` fails on any warning: a broken link or anchor, a page
missing from the nav, a docstring mkdocstrings cannot render, an API page whose
module moved. The other tests run the pages' code and hold the tables that
restate the code (options, error codes) to it.

mkdocs and mkdocstrings come with the ``test`` extra; these tests are never
skipped.
"""

from __future__ import annotations

import dataclasses
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Annotated

import msgspec
import pytest

from callrt import call, component, errors, inline
from callrt.component import component_spec
from callrt.errors import GRPC_STATUS, HTTP_STATUS, ErrorCode, remote_error

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ERRORS_PAGE = (DOCS / "errors.md").read_text()

# A block the docs mark as a runnable file: <!-- runnable: NAME.py --> then a ```python fence.
_RUNNABLE = re.compile(r"<!-- runnable: (?P<name>[\w.-]+\.py) -->\s*```python\n(?P<code>.*?)\n```", re.DOTALL)


def runnable_blocks(page: str) -> dict[str, str]:
    """The runnable blocks of ``docs/<page>``, by file name."""
    return {m["name"]: m["code"] + "\n" for m in _RUNNABLE.finditer((DOCS / page).read_text())}


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "api" / "call" / "index.html").is_file()


def test_runnable_blocks_compile() -> None:
    blocks = {
        f"{page.name}:{name}": code for page in DOCS.glob("*.md") for name, code in runnable_blocks(page.name).items()
    }
    assert {"index.md:index_example.py", "getting-started.md:worker.py", "getting-started.md:client.py"} <= set(blocks)
    for where, code in blocks.items():
        compile(code, where, "exec")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_the_home_page_example_runs(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(runnable_blocks("index.md")["index_example.py"])
    result = _run(["example.py"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, world!\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_getting_started_worker_and_client_run(tmp_path: Path) -> None:
    """The three files of getting-started.md, as printed there, on a free port instead of 9000."""
    port = _free_port()
    for name, code in runnable_blocks("getting-started.md").items():
        (tmp_path / name).write_text(code.replace("127.0.0.1:9000", f"127.0.0.1:{port}"))
    worker = subprocess.Popen([sys.executable, "worker.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        ready, _, _ = select.select([worker.stdout], [], [], 20)
        assert ready and worker.stdout.readline() == f"serving on tcp://127.0.0.1:{port}\n"
        result = _run(["client.py"], tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "Greeting(text='Hello, world!', length=13)\n42\n"  # as the page shows
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0  # drained and returned, as the page says
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


@pytest.mark.parametrize("options", [call.ServerOptions, call.ClientOptions, call.CallOptions, call.RetryPolicy])
def test_every_option_is_documented(options: type) -> None:
    text = (DOCS / "options.md").read_text() + (DOCS / "retries.md").read_text()
    missing = [f.name for f in dataclasses.fields(options) if f"`{f.name}`" not in text]
    assert not missing, f"{options.__name__} fields missing from docs/options.md: {missing}"


def test_the_error_code_table_matches_the_code() -> None:
    """Each row: code, wire value, HTTP status, gRPC status, and the class the client raises for it."""
    row = re.compile(r"^\| `(\w+)` \| `(\w+)` \| (\d+) \| (\d+) `\w+` \| `(\w+)`", re.MULTILINE)
    table = {name: (value, int(http), int(grpc), cls) for name, value, http, grpc, cls in row.findall(ERRORS_PAGE)}
    expected = {
        c.name: (c.value, HTTP_STATUS[c], GRPC_STATUS[c], type(remote_error(c, "", "", "")).__name__) for c in ErrorCode
    }
    assert table == expected


def test_the_error_tree_names_every_error() -> None:
    tree = ERRORS_PAGE.split("```text", 1)[1].split("```", 1)[0]
    drawn = set(re.findall(r"\b([A-Z]\w+)\b", tree))
    public = {name for name in errors.__all__ if isinstance(getattr(errors, name), type) and name != "ErrorCode"}
    assert public <= drawn, f"errors missing from the tree in docs/errors.md: {sorted(public - drawn)}"


# -- the rules docs/compatibility.md states, on the codecs both sides build -----------------


class _ItemV1(msgspec.Struct):
    sku: str


class _ItemV2(msgspec.Struct):
    sku: str
    qty: int = 1


class _ItemV2Required(msgspec.Struct):
    sku: str
    qty: int


@component(name="docs.Compat")
class _V1:
    def add(self, a: int) -> int:
        raise NotImplementedError

    def put(self, item: _ItemV1) -> None: ...

    def total(self) -> int:
        raise NotImplementedError

    def rename(self, a: int) -> None: ...


@component(name="docs.Compat")
class _V2:
    def add(self, a: int, b: int = 7) -> int:
        raise NotImplementedError

    def put(self, item: _ItemV2) -> None: ...

    def total(self) -> float:
        raise NotImplementedError

    def rename(self, renamed: int) -> None: ...


@component(name="docs.Compat")
class _V2Required:
    def put(self, item: _ItemV2Required) -> None: ...

    def rename(self, a: int, extra: int) -> None: ...


def _send(sender: type, receiver: type, method: str, *args: object) -> tuple[object, ...]:
    """Arguments encoded by ``sender``'s client and decoded by ``receiver``'s server."""
    payload = component_spec(sender).methods[method].payload_from_args(args, {})
    return component_spec(receiver).methods[method].args_from_payload(payload)


def test_the_compatibility_rules_hold() -> None:
    assert component_spec(_V1).methods["add"].key == component_spec(_V2).methods["add"].key  # same name, same key
    # A trailing parameter added with a default: old callers get the server's default, and new
    # callers that do not pass it are served by old servers; passing it there fails, naming it.
    assert _send(_V1, _V2, "add", 1) == (1, 7)
    assert _send(_V2, _V1, "add", 1) == (1,)
    with pytest.raises(errors.InvalidArgument, match="docs.Compat.add: the call sent 2 arguments.*takes 1 \\(a\\)"):
        _send(_V2, _V1, "add", 1, 7)
    # A parameter added without a default breaks old callers, naming the parameter.
    with pytest.raises(errors.InvalidArgument, match="docs.Compat.rename: missing argument 'extra'"):
        _send(_V1, _V2Required, "rename", 1)
    # Renaming a parameter does not matter: names do not travel.
    assert _send(_V1, _V2, "rename", 5) == (5,)
    # A Struct field added with a default works both ways; one without a default breaks old clients.
    assert _send(_V1, _V2, "put", _ItemV1("x")) == (_ItemV2("x", 1),)
    assert _send(_V2, _V1, "put", _ItemV2("x", 3)) == (_ItemV1("x"),)
    with pytest.raises(errors.InvalidArgument, match="missing required field `qty`"):
        _send(_V1, _V2Required, "put", _ItemV1("x"))
    # Results are decoded with the client's return type: int -> float widens, float -> int fails.
    assert (
        component_spec(_V2).methods["total"].decode_result(component_spec(_V1).methods["total"].encode_result(1)) == 1.0
    )
    with pytest.raises(msgspec.ValidationError):
        component_spec(_V1).methods["total"].decode_result(component_spec(_V2).methods["total"].encode_result(1.5))


# -- behaviour the pages describe as today's, so that a change to it sends us back to them ----


@component(name="docs.Threads")
class _Threads:
    def sync_thread(self) -> int:
        return threading.get_ident()

    @inline
    def inline_thread(self) -> int:
        return threading.get_ident()


@pytest.mark.anyio
async def test_plain_methods_run_in_threads_and_inline_ones_on_the_loop_as_getting_started_says() -> None:
    async with call.start_server("memory://docs-threads", _Threads()):
        async with call.connect("memory://docs-threads") as client:
            stub = client.stub(_Threads)
            plain = await stub.sync_thread()  # type: ignore[misc]  # stubs of a component class are typed as the class
            inlined = await stub.inline_thread()  # type: ignore[misc]
    assert plain != threading.get_ident(), "plain def methods run on the loop again: update getting-started.md"
    assert inlined == threading.get_ident(), "@inline methods left the loop: update getting-started.md"


@pytest.mark.anyio
async def test_a_stopped_server_removes_its_socket_file_as_deployment_says(sockdir: Path) -> None:
    path = sockdir / "w.sock"
    async with call.start_server(f"unix://{path}", _Threads()):
        assert path.is_socket()
    assert not path.exists(), "servers leave their socket file again: deployment.md says they remove it"


@component(name="docs.Constrained")
class _Constrained:
    def take(self, n: Annotated[int, msgspec.Meta(ge=0)]) -> None: ...


def test_constraints_on_parameters_are_checked_as_types_says() -> None:
    spec = component_spec(_Constrained).methods["take"]
    assert spec.args_from_payload(spec.payload_from_args((0,), {})) == (0,)
    with pytest.raises(errors.InvalidArgument, match="invalid argument 'n'"):
        spec.args_from_payload(spec.payload_from_args((-1,), {}))
