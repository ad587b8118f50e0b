"""VAPID (RFC 8292) key pairs for apps."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class VapidKeyPair:
    private_pem: str
    public_key: str  # b64url uncompressed point: the browser's applicationServerKey


def generate_vapid_key_pair() -> VapidKeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    return VapidKeyPair(private_pem=private_pem(key), public_key=public_key_b64(key.public_key()))


def private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_b64(public_key: ec.EllipticCurvePublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
