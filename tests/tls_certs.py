"""Test certificates: a trustme CA, and leaves it signs, written to a scratch directory.

trustme issues DNS, IP and e-mail names only; the client certificates here
also carry a URI name (a SPIFFE ID), so they are built with ``cryptography``
(trustme's own dependency) and signed with the trustme CA's key. Nothing is
committed to the repository: every run makes fresh keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from callrt import tls

__all__ = ("Certs", "Leaf", "issue", "make_certs")


@dataclass(frozen=True, slots=True)
class Leaf:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


def _name(identity: str) -> x509.GeneralName:
    if "://" in identity:
        return x509.UniformResourceIdentifier(identity)
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        return x509.DNSName(identity)


def issue(ca: trustme.CA, directory: Path, label: str, *identities: str) -> Leaf:
    """A leaf signed by ``ca`` for ``identities`` (URIs, DNS names, IP addresses), good for servers and clients."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # make_certs asks trustme for ECDSA
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_name(i) for i in identities]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = Leaf(directory / f"{label}.pem", directory / f"{label}.key")
    leaf.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    leaf.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return leaf


@dataclass(frozen=True, slots=True)
class Certs:
    """A CA, a server certificate (localhost, 127.0.0.1, ::1, callrt.test), two clients, and another CA."""

    ca: Path
    other_ca: Path  # trusted by nobody here; signs ``stranger``
    server: Leaf
    client: Leaf  # spiffe://test/client, client.test
    other: Leaf  # spiffe://test/other, other.test
    stranger: Leaf  # signed by another CA

    def server_context(self, *, mutual: bool = True) -> ssl.SSLContext:
        return tls.server_context(self.server.cert, self.server.key, client_ca_file=self.ca if mutual else None)

    def client_context(self, leaf: Leaf | None = None) -> ssl.SSLContext:
        if leaf is None:
            return tls.client_context(self.ca)
        return tls.client_context(self.ca, cert_file=leaf.cert, key_file=leaf.key)


def make_certs(directory: Path) -> Certs:
    ca, other_ca = trustme.CA(key_type=trustme.KeyType.ECDSA), trustme.CA(key_type=trustme.KeyType.ECDSA)
    ca_file, other_ca_file = directory / "ca.pem", directory / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other_ca.cert_pem.write_to_path(str(other_ca_file))
    return Certs(
        ca=ca_file,
        other_ca=other_ca_file,
        server=issue(ca, directory, "server", "localhost", "127.0.0.1", "::1", "callrt.test"),
        client=issue(ca, directory, "client", "spiffe://test/client", "client.test"),
        other=issue(ca, directory, "other", "spiffe://test/other", "other.test"),
        stranger=issue(other_ca, directory, "stranger", "spiffe://test/stranger"),
    )
