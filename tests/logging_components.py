"""Components for tests/test_logging.py, served in-process and by worker processes."""

from __future__ import annotations

from callrt import component
from callrt.errors import ErrorCode, InvalidArgument, RemoteError


class OutOfStock(RemoteError):
    """An error a handler raises on purpose: the caller is told; nothing for the operator to fix."""

    default_code = ErrorCode.FAILED_PRECONDITION


@component(name="tests.Faulty")
class Faulty:
    async def boom(self, n: int) -> int:
        raise KeyError(f"no item {n}")

    async def refuse(self, sku: str) -> int:
        raise OutOfStock(f"{sku} is out of stock")

    async def invalid(self, n: int) -> int:
        raise InvalidArgument(f"n={n} is not allowed")

    async def unencodable(self) -> int:
        return object()  # type: ignore[return-value]  # the result cannot be encoded

    async def ok(self, n: int) -> int:
        return n
