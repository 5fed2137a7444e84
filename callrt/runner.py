"""``callrt.run``: start an event loop for a callrt program, on uvloop when it is installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ("run",)

T = TypeVar("T")


def run(func: Callable[..., Awaitable[T]], *args: Any, backend: str = "asyncio") -> T:
    """Run ``func(*args)`` on ``backend``; on asyncio, uvloop's loop is used when uvloop is installed."""
    options: dict[str, Any] = {}
    if backend == "asyncio":
        options["use_uvloop"] = importlib.util.find_spec("uvloop") is not None
    return anyio.run(func, *args, backend=backend, backend_options=options)
