"""Access policies: which callers may call which methods, checked by the server before a handler runs.

A policy is any callable ``policy(peer, component, method) -> bool`` given
as ``ServerOptions(access=...)``; :class:`AllowList` is the usual one, a
table of the identities allowed per component and per method::

    ServerOptions(
        tls=tls.server_context("server.pem", "server.key", client_ca_file="ca.pem"),
        access=AllowList({
            "shop.Cart": ["spiffe://example.org/frontend", "spiffe://example.org/admin"],
            "shop.Cart.checkout": ["spiffe://example.org/frontend"],  # a method's rule replaces its component's
            "shop.Health": ["*"],                                      # anyone
        }),
    )

A refused call fails with :class:`~callrt.errors.PermissionDenied` without
its handler running, and is logged at WARNING on the ``callrt.server``
logger with the peer's address and the method's name. The server decides
once per connection and method (a connection's peer does not change), so a
policy costs one dictionary look-up per call, and nothing when there is
none. A policy that raises refuses (and the error is logged).

A peer's identities (:func:`identities`) are what the transport verified:
the URI names (SPIFFE IDs, say) and DNS names of a TLS client's certificate
(mutual TLS), and for a Unix-socket peer ``uid:N`` and ``gid:N`` from the
kernel (``SO_PEERCRED``). A plaintext TCP peer has none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .context import Peer

__all__ = ("AccessPolicy", "AllowList", "identities")

AccessPolicy = Callable[[Peer, str, str], bool]
"""``policy(peer, component, method)``: whether ``peer`` may call ``component.method``."""


def identities(peer: Peer) -> tuple[str, ...]:
    """The verified identities of ``peer``: certificate URI and DNS names, ``uid:N`` and ``gid:N`` for Unix peers."""
    unix: tuple[str, ...] = ()
    if peer.uid is not None:
        unix = (f"uid:{peer.uid}",) if peer.gid is None else (f"uid:{peer.uid}", f"gid:{peer.gid}")
    return (*peer.uri_sans, *peer.dns_sans, *unix)


class AllowList:
    """Allows a call when one of the caller's :func:`identities` is listed for its method.

    ``rules`` maps ``"component.method"``, ``"component"`` or ``"*"`` (every
    other method) to identities; the most specific key present decides. An
    identity ``"*"`` allows every caller. A method no key covers is refused.
    """

    __slots__ = ("rules",)

    def __init__(self, rules: Mapping[str, Iterable[str]]) -> None:
        self.rules: dict[str, frozenset[str]] = {}
        for key, allowed in rules.items():
            if isinstance(allowed, str):
                raise TypeError(f"the identities of {key!r} must be a collection of strings, not one string")
            self.rules[key] = frozenset(allowed)

    def __call__(self, peer: Peer, component: str, method: str) -> bool:
        rules = self.rules
        allowed = rules.get(f"{component}.{method}")
        if allowed is None:
            allowed = rules.get(component)
            if allowed is None:
                allowed = rules.get("*")
                if allowed is None:
                    return False
        return "*" in allowed or not allowed.isdisjoint(identities(peer))

    def __repr__(self) -> str:
        return f"AllowList({ {key: sorted(ids) for key, ids in self.rules.items()}!r})"
