"""The server's access check: a handler look-up that refuses what the policy does not allow.

With a policy configured (``ServerOptions.access``), a connection looks its
handlers up through :func:`checked_lookup` instead of the handler table's own
``get``: the first call of each method on the connection asks the policy
about the connection's peer, and the answer (the real handler, or one that
refuses) is kept for the connection's later calls. Without a policy nothing
here runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..access import AccessPolicy, identities
from ..context import Peer
from ..errors import PermissionDenied
from ..handlers import RegisteredHandler

__all__ = ("checked_lookup",)

log = logging.getLogger("callrt.server")


def checked_lookup(
    find: Callable[[bytes], RegisteredHandler | None], policy: AccessPolicy, peer: Callable[[], Peer]
) -> Callable[[bytes], RegisteredHandler | None]:
    """``find``, with the entries of methods ``policy`` refuses to ``peer()`` replaced by refusals."""
    decided: dict[bytes, RegisteredHandler] = {}

    def lookup(key: bytes) -> RegisteredHandler | None:
        entry = decided.get(key)
        if entry is None:
            entry = find(key)
            if entry is None:
                return None  # unknown keys are not remembered: a peer cannot grow this table
            who = peer()
            component, _, method = entry.name.rpartition(".")
            try:
                allowed = bool(policy(who, component, method))
            except Exception:
                log.exception("the access policy failed on %s from %s; refusing", entry.name, who.address)
                allowed = False
            if not allowed:
                entry = _refusal(entry.name, who)
            decided[key] = entry
        return entry

    return lookup


def _refusal(name: str, peer: Peer) -> RegisteredHandler:
    """An entry whose handler logs the refusal and raises :class:`PermissionDenied` (the real one never runs)."""
    # Certificate names are the CA's word, but escape anything unprintable all the same.
    ids = ascii(", ".join(identities(peer)))[1:-1] or "none"
    message = f"{name}: the server's access policy does not allow this caller"

    def refuse(payload: bytes) -> bytes:
        # The method's name comes from the handler table and the address from the socket:
        # nothing the peer wrote on the wire reaches the log.
        log.warning("refused a call of %s from %s (identities: %s)", name, peer.address, ids)
        raise PermissionDenied(message)

    return RegisteredHandler(name, refuse, is_async=False, inline=True)
