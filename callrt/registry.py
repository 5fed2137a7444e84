"""Registrars: how a server announces itself to a discovery system while it serves."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager

from .endpoints import Endpoint

__all__ = ("Registrar",)


class Registrar(ABC):
    """Keeps a serving endpoint registered.

    ``call.serve`` enters :meth:`registered` once its listeners are bound and
    exits it first when it drains, before the goaway, so that clients stop
    picking the server before it stops taking calls.
    """

    @abstractmethod
    def registered(self, endpoint: Endpoint) -> AbstractAsyncContextManager[None]:
        """Register ``endpoint`` on enter, keep the registration alive, remove it on exit."""
