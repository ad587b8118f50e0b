"""Throw-away TLS material for the local stand-ins.

``make_test_certificate()`` generates, at run time, a self-signed certificate
authority and a server certificate signed by it for ``localhost`` and
``127.0.0.1`` (both in subjectAltName), and writes them as PEM files. Nothing is
checked in and nothing is fetched: every run gets fresh keys.

``server_ssl_context()`` / ``client_ssl_context()`` build the two ends, both
with ALPN ``h2`` (HTTP/2 over TLS needs it; aioapns does not set ALPN itself).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "TestCertificate",
    "client_ssl_context",
    "make_test_certificate",
    "server_ssl_context",
]

_VALIDITY = datetime.timedelta(days=30)
_BACKDATE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class TestCertificate:
    """Paths of the generated PEM files.

    ``ca_path``: the CA certificate a client must trust.
    ``cert_path``: the server certificate (leaf followed by the CA, a full chain).
    ``key_path``: the server's private key (unencrypted PKCS#8, mode 0600).
    ``directory``: where they were written.
    """

    __test__ = False  # not a pytest test class, despite its name

    ca_path: str
    cert_path: str
    key_path: str
    directory: str = ""

    def cleanup(self) -> None:
        """Delete the three files, and the directory if it is then empty."""
        for path in (self.ca_path, self.cert_path, self.key_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if self.directory:
            try:
                os.rmdir(self.directory)
            except OSError:
                pass


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def make_test_certificate(directory: str | None = None) -> TestCertificate:
    """Generate a CA and a ``localhost``/``127.0.0.1`` server certificate.

    Files are written to ``directory`` (created if missing) or, by default, to
    a new temporary directory; call ``cleanup()`` on the result to remove them.
    """
    if directory is None:
        directory = tempfile.mkdtemp(prefix="pushq-tls-")
    else:
        os.makedirs(directory, exist_ok=True)

    now = datetime.datetime.now(datetime.UTC)
    not_before = now - _BACKDATE
    not_after = now + _VALIDITY

    # --- certificate authority -------------------------------------------
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pushq stand-ins"),
            x509.NameAttribute(NameOID.COMMON_NAME, "pushq stand-in test CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    # --- server certificate ----------------------------------------------
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pushq stand-ins"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    ca_path = os.path.join(directory, "ca.pem")
    cert_path = os.path.join(directory, "server.pem")
    key_path = os.path.join(directory, "server-key.pem")
    _write(ca_path, ca_pem)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    _write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    return TestCertificate(
        ca_path=ca_path, cert_path=cert_path, key_path=key_path, directory=directory
    )


def server_ssl_context(cert: TestCertificate) -> ssl.SSLContext:
    """TLS ≥ 1.2 server context presenting ``cert``, offering ALPN ``h2``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert.cert_path, cert.key_path)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def client_ssl_context(cert: TestCertificate) -> ssl.SSLContext:
    """Client context that trusts ``cert.ca_path`` (only) and asks for ALPN ``h2``.

    Hostname checking stays on: connect to ``localhost`` or ``127.0.0.1``.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert.ca_path)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    return ctx


def remove_directory(cert: TestCertificate) -> None:
    """Remove ``cert.directory`` and everything in it (for temp directories)."""
    if cert.directory:
        shutil.rmtree(cert.directory, ignore_errors=True)
