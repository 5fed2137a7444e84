"""Public names: ``__all__`` says exactly what each public module offers; the codec stays sans-IO."""

from __future__ import annotations
import __future__

import ast
import importlib
import inspect
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import callrt
import callrt.call
import callrt.errors
import callrt.protocol

# Modules whose ``__all__`` is checked; re-exporting ones must list what they import, too.
CHECKED = ["callrt", "callrt.call", "callrt.errors", "callrt.protocol", "callrt.keys", "callrt.component"]
REEXPORTING = {"callrt", "callrt.call"}
IO_MODULES = {"anyio", "asyncio", "socket", "trio", "selectors", "ssl", "sniffio", "uvloop", "threading", "time"}


def public_names(module: types.ModuleType) -> Iterator[str]:
    """The public names ``module`` defines, or (when it re-exports) imports, other than submodules."""
    reexports = module.__name__ in REEXPORTING
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if isinstance(value, __future__._Feature) or isinstance(value, types.ModuleType):
            continue
        if isinstance(value, type) or inspect.isfunction(value):
            if value.__module__ == module.__name__ or reexports:
                yield name
        elif getattr(value, "__module__", None) in ("typing", "typing_extensions"):
            continue  # ClassVar, Final, ... imported for annotations
        elif callable(value):  # e.g. a NewType
            if getattr(value, "__module__", None) == module.__name__ or reexports:
                yield name
        elif isinstance(value, (int, str, bytes, dict, range, tuple, frozenset)):
            yield name  # constants


@pytest.mark.parametrize("name", CHECKED)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    assert isinstance(module.__all__, tuple | list)
    assert len(set(module.__all__)) == len(module.__all__), "duplicates in __all__"
    for export in module.__all__:
        assert hasattr(module, export), f"{name}.__all__ lists missing {export!r}"


@pytest.mark.parametrize("name", CHECKED)
def test_every_public_name_is_in_all(name: str) -> None:
    module = importlib.import_module(name)
    missing = sorted(set(public_names(module)) - set(module.__all__))
    assert not missing, f"public names of {name} not in __all__: {missing}"


def test_package_exports() -> None:
    assert {"call", "component", "errors", "not_retriable"} <= set(callrt.__all__)
    assert callrt.call is importlib.import_module("callrt.call")
    assert callrt.errors is importlib.import_module("callrt.errors")
    # The decorator, not the submodule of the same name.
    assert callable(callrt.component) and not isinstance(callrt.component, types.ModuleType)
    assert callrt.__version__


def test_call_namespace_reexports_the_public_api() -> None:
    from callrt.call import connect, make_method_key, serve

    assert connect.__module__ == "callrt.client"
    assert serve.__module__ == "callrt.server"
    assert make_method_key.__module__ == "callrt.keys"
    for export in callrt.call.__all__:
        value = getattr(callrt.call, export)
        if inspect.isfunction(value) or (isinstance(value, type) and value.__module__ != "builtins"):
            assert value.__module__.startswith("callrt."), export


def test_errors_exports_every_exception() -> None:
    defined = {
        name
        for name, value in vars(callrt.errors).items()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == "callrt.errors"
    }
    assert defined <= set(callrt.errors.__all__)
    assert "remote_error" in callrt.errors.__all__
    assert {"ErrorCode", "HTTP_STATUS", "GRPC_STATUS"} <= set(callrt.errors.__all__)


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (relative imports excluded)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", [callrt.protocol, callrt.errors], ids=lambda m: m.__name__)
def test_protocol_is_sans_io(module: types.ModuleType) -> None:
    """The codec (and the errors it raises) import no event loop, socket or clock."""
    assert module.__file__ is not None
    imports = imported_modules(Path(module.__file__))
    assert not imports & IO_MODULES, imports & IO_MODULES
    for value in vars(module).values():
        if isinstance(value, types.ModuleType):
            assert value.__name__.split(".")[0] not in IO_MODULES, value.__name__
        else:
            origin = getattr(value, "__module__", None) or ""
            assert origin.split(".")[0] not in IO_MODULES, value


def test_protocol_relative_imports_are_sans_io() -> None:
    assert callrt.protocol.__file__ is not None
    tree = ast.parse(Path(callrt.protocol.__file__).read_text(encoding="utf-8"))
    relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0}
    assert relative <= {"errors"}, relative
