"""A component and server interceptors for tests/test_interceptors.py, importable by worker processes."""

from __future__ import annotations

import dataclasses
import threading

from callrt import call, component, errors, inline
from callrt.interceptors import ServerCall, ServerNext


@component(name="tests.Intercepted")
class Intercepted:
    """Each method reports what the handler sees of its call, and on which thread it ran."""

    async def meta(self) -> dict[str, str]:
        current = call.current_call()
        assert current is not None
        return dict(current.metadata)

    def meta_thread(self) -> dict[str, str]:  # a plain def: a worker thread
        current = call.current_call()
        assert current is not None
        return {**current.metadata, "main_thread": str(threading.current_thread() is threading.main_thread())}

    @inline
    def meta_inline(self) -> dict[str, str]:
        current = call.current_call()
        assert current is not None
        return {**current.metadata, "main_thread": str(threading.current_thread() is threading.main_thread())}

    async def secret(self) -> str:
        return "the secret"

    async def fail(self) -> str:
        raise errors.RemoteError("the handler failed", code=errors.ErrorCode.NOT_FOUND)


async def reject_secret(call: ServerCall, next: ServerNext) -> bytes:  # the documented name
    """Refuses ``secret`` unless the caller sent ``role: admin``."""
    if call.method.endswith(".secret") and call.metadata.get("role") != "admin":
        raise errors.PermissionDenied(f"{call.method} needs role admin")
    return await next(call)


async def stamp_peer(call: ServerCall, next: ServerNext) -> bytes:
    """Adds ``peer`` (the caller's address) and ``seen_by: server`` to the metadata the handler sees."""
    metadata = {**call.metadata, "peer": call.peer.address, "seen_by": "server"}
    return await next(dataclasses.replace(call, metadata=metadata))
