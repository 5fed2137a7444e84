"""``ServerOptions`` from JSON, for worker processes (``--options``); see :mod:`callrt.testing.worker`.

A module of its own so that the package can check options without importing
the worker's ``__main__`` module (``python -m`` warns when the package did).
"""

from __future__ import annotations

import importlib
from typing import Any

from .. import call, tls
from ..access import AllowList

__all__ = ("server_options",)


def _load(name: str) -> Any:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def server_options(fields: dict[str, Any]) -> call.ServerOptions:
    """``ServerOptions`` from JSON-able ``fields`` (see the module docstring for the extra keys)."""
    fields = dict(fields)
    cert, key, client_ca = fields.pop("tls_cert", None), fields.pop("tls_key", None), fields.pop("tls_client_ca", None)
    if cert is not None:
        fields["tls"] = tls.server_context(cert, key, client_ca_file=client_ca)
    elif key is not None or client_ca is not None:
        raise ValueError("tls_key and tls_client_ca need tls_cert")
    if isinstance(fields.get("access"), dict):
        fields["access"] = AllowList(fields["access"])
    if "interceptors" in fields:  # "module:attr" names of interceptors, the first outermost
        fields["interceptors"] = tuple(_load(name) for name in fields["interceptors"])
    return call.ServerOptions(**fields)
