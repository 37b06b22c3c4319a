"""SSH key pairs: import a public key or create a pair; fingerprints in AWS's formats.

Created RSA: SHA-1 of the PKCS#8 DER private key. Imported RSA: MD5 of the public key's
SubjectPublicKeyInfo DER. ED25519 (either way): base64 SHA-256 of the OpenSSH key blob."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from corral.errors import Invalid

KEY_NAME = re.compile(r"^[\x20-\x7e]{1,255}$")


@dataclass(frozen=True)
class KeyMaterial:
    key_type: str  # rsa | ed25519
    public_key: str  # one OpenSSH line
    fingerprint: str
    private_key: str | None = None  # only when created


def _colon(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def check_name(name: str) -> str:
    if not KEY_NAME.match(name or ""):
        raise Invalid(
            f"key pair name {name!r} must be 1-255 printable ASCII characters", field="name"
        )
    return name


def parse_public(text: str) -> KeyMaterial:
    """An OpenSSH public key line (``ssh-ed25519 AAAA… comment``) or a PEM public key."""
    raw = text.strip().encode()
    try:
        if raw.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_ssh_public_key(b" ".join(raw.split()[:2]))
    except (ValueError, UnsupportedAlgorithm, IndexError) as err:
        raise Invalid(
            "public key is not an OpenSSH public key (expected a line like "
            "'ssh-ed25519 AAAA… user@host', e.g. the content of ~/.ssh/id_ed25519.pub)",
            field="public_key",
        ) from err
    openssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    comment = b" ".join(raw.split()[2:]) if not raw.startswith(b"-----BEGIN") else b""
    line = (openssh + (b" " + comment if comment else b"")).decode()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise Invalid(
                f"RSA key of {key.key_size} bits is too short; use 2048 bits or more",
                field="public_key",
            )
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return KeyMaterial("rsa", line, _colon(hashlib.md5(spki).digest()))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return KeyMaterial("ed25519", line, _ed25519_fingerprint(openssh))
    raise Invalid("only RSA and ED25519 keys are supported", field="public_key")


def _ed25519_fingerprint(openssh: bytes) -> str:
    blob = base64.b64decode(openssh.split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()).decode()


def create(key_type: str = "ed25519") -> KeyMaterial:
    if key_type == "rsa":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pkcs8 = priv.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        pub = priv.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return KeyMaterial("rsa", pub.decode(), _colon(hashlib.sha1(pkcs8).digest()), pem)
    if key_type == "ed25519":
        priv_ed = ed25519.Ed25519PrivateKey.generate()
        pem = priv_ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        pub = priv_ed.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return KeyMaterial("ed25519", pub.decode(), _ed25519_fingerprint(pub), pem)
    raise Invalid(f"key type {key_type!r} must be rsa or ed25519", field="key_type")
