"""One factory for the EC P-256 key pairs tests need (APNs .p8 keys, VAPID keys, JWT keys)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@dataclass(frozen=True)
class KeyPair:
    private_pem: str  # PKCS8, as in an APNs .p8 file
    public_pem: str  # SubjectPublicKeyInfo


def ec_key_pair() -> KeyPair:
    """An EC P-256 pair (APNs .p8 keys, VAPID, ES256 tokens)."""
    return pem_pair(ec.generate_private_key(ec.SECP256R1()))


def rsa_key_pair(bits: int = 2048) -> KeyPair:
    """An RSA pair (RS256 tokens; smaller sizes to test refusals)."""
    return pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def pem_pair(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> KeyPair:
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return KeyPair(private_pem, public_pem)
