from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TypeAlias

from ..endpoints import Endpoint, parse_endpoint

Version: TypeAlias = str
"""Opaque; resolvers compare versions only for equality."""


class Resolver(ABC):
    """A versioned source of endpoints."""

    @abstractmethod
    def is_constant(self) -> bool:
        """True when the endpoints never change, so the client resolves once."""

    @abstractmethod
    async def resolve(self, version: Version | None) -> tuple[Sequence[Endpoint], Version | None]:
        """The endpoints and their version.

        With ``version=None`` return the current set at once. Otherwise block
        until a set newer than ``version`` exists and return it, or return
        ``version`` itself to mean "ask again later". A constant resolver
        returns version ``None``. Errors are retried by the client with backoff.
        """

    async def aclose(self) -> None:
        """Release what the resolver holds (watches, HTTP clients)."""


class ConstantResolver(Resolver):
    """A fixed set of endpoints, given as :class:`Endpoint` or URL strings."""

    def __init__(self, endpoints: Iterable[Endpoint | str]) -> None:
        self._endpoints = tuple(parse_endpoint(e) for e in endpoints)

    def is_constant(self) -> bool:
        return True

    async def resolve(self, version: Version | None) -> tuple[Sequence[Endpoint], Version | None]:
        return self._endpoints, None

    def __repr__(self) -> str:
        return f"ConstantResolver([{', '.join(map(str, self._endpoints))}])"
