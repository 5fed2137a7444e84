"""TLS contexts from certificate files, for ``ServerOptions(tls=...)`` and ``ClientOptions(tls=...)``.

callrt takes TLS settings as :class:`ssl.SSLContext` objects, as asyncio and
httpx do, so anything the ``ssl`` module can express is available; these
helpers build the two usual ones from PEM files::

    server = ServerOptions(tls=tls.server_context("server.pem", "server.key", client_ca_file="ca.pem"))
    client = ClientOptions(tls=tls.client_context("ca.pem", cert_file="client.pem", key_file="client.key"))

With ``client_ca_file`` the server requires and verifies a client certificate
(mutual TLS); the client's verified URI and DNS names are then in
``call.current_call().peer`` and can be checked by an access policy
(:mod:`callrt.access`). A client always verifies the server's certificate
against ``ca_file`` (or the system's trust store) and checks that it names
the host of the endpoint it dials (or ``ClientOptions.tls_server_name``).

Protocol versions: TLS 1.2 is the minimum by default, the usual choice (what
Python's own defaults, grpc and most load balancers accept); TLS 1.3 is
negotiated whenever both ends have it, which OpenSSL 1.1.1 and later always
do. Pass ``minimum_version=ssl.TLSVersion.TLSv1_3`` to refuse 1.2.
"""

from __future__ import annotations

import os
import ssl

__all__ = ("DEFAULT_MINIMUM_VERSION", "client_context", "server_context")

#: The oldest protocol version the helpers' contexts accept.
DEFAULT_MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2

StrPath = str | os.PathLike[str]


def server_context(
    cert_file: StrPath,
    key_file: StrPath | None = None,
    *,
    client_ca_file: StrPath | None = None,
    password: str | None = None,
    minimum_version: ssl.TLSVersion = DEFAULT_MINIMUM_VERSION,
) -> ssl.SSLContext:
    """A server's context: its certificate chain and key, and, for mutual TLS, the CAs of its clients.

    :param cert_file: PEM: the server's certificate, then any intermediates.
    :param key_file: PEM: its private key (``None``: the key is in ``cert_file``).
    :param client_ca_file: PEM: the CAs that sign client certificates. Given,
        every client must present a certificate they signed (mutual TLS);
        a client without one fails its handshake.
    :param password: decrypts an encrypted private key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = minimum_version
    context.load_cert_chain(cert_file, key_file, password)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: StrPath | None = None,
    *,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
    password: str | None = None,
    minimum_version: ssl.TLSVersion = DEFAULT_MINIMUM_VERSION,
) -> ssl.SSLContext:
    """A client's context: the CAs it trusts for servers and, for mutual TLS, its own certificate.

    Server certificates are always verified, host names included.

    :param ca_file: PEM: the CAs that sign server certificates (``None``: the system's trust store).
    :param cert_file: PEM: the client's certificate chain, for servers that require one.
    :param key_file: PEM: its private key (``None``: the key is in ``cert_file``).
    :param password: decrypts an encrypted private key.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = minimum_version
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file, password)
    elif key_file is not None:
        raise ValueError("key_file given without cert_file")
    return context
