"""Certificates for the TLS profile: made with trustme when the run starts, written to a temporary directory.

Both systems read the same files (``--tls-dir DIR``): ``ca.pem``, the server's
``server.pem``/``server.key`` (for ``localhost`` and ``127.0.0.1``) and the
client's ``client.pem``/``client.key``, so callrt and grpc.aio are measured
with the same keys (ECDSA P-256), mutual TLS and TLS 1.3.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ("SERVER_NAME", "client_context", "make_certs", "server_context")

#: The name in the server's certificate that clients check (grpc: ``ssl_target_name_override``).
SERVER_NAME = "localhost"


def server_context(directory: Path) -> ssl.SSLContext:
    """Mutual TLS 1.3, for the systems that take an ``ssl.SSLContext`` without callrt's helpers (raw)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    context.load_verify_locations(directory / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(directory: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=directory / "ca.pem")
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(directory / "client.pem", directory / "client.key")
    return context


def make_certs(directory: Path) -> Path:
    """Write a CA, a server and a client certificate into ``directory``; returns it."""
    import trustme  # a test dependency: imported only when the TLS profile runs

    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    for name, identities in (("server", (SERVER_NAME, "127.0.0.1")), ("client", ("client.bench",))):
        leaf = ca.issue_cert(*identities, key_type=trustme.KeyType.ECDSA)
        leaf.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
        leaf.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    return directory
