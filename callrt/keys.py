"""Method keys: the 16 bytes that name a method on the wire."""

from __future__ import annotations

from typing import NewType

import xxhash

__all__ = ("MethodKey", "make_method_key")

MethodKey = NewType("MethodKey", bytes)
"""16 bytes: the xxh3-128 digest of ``"<component>.<method>"``."""


def make_method_key(component: str, method: str) -> MethodKey:
    """The wire key of ``component.method``: xxh3-128 of ``"<component>.<method>"``, big-endian."""
    return MethodKey(xxhash.xxh3_128_digest(f"{component}.{method}".encode()))
