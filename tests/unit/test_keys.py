"""SSH key material: parsing OpenSSH public keys, creating pairs, AWS's fingerprint formats."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from corral.controller import keys
from corral.errors import Code, Invalid

PUB = serialization.PublicFormat
ENC = serialization.Encoding


def _ed25519_line(comment: str = "alice@laptop") -> tuple[ed25519.Ed25519PrivateKey, str]:
    priv = ed25519.Ed25519PrivateKey.generate()
    line = priv.public_key().public_bytes(ENC.OpenSSH, PUB.OpenSSH).decode()
    return priv, f"{line} {comment}".strip()


def _rsa(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return _rsa(2048)


def test_parse_ed25519_line_keeps_the_comment() -> None:
    _, line = _ed25519_line("alice@laptop")
    km = keys.parse_public(f"  {line}\n")
    assert km.key_type == "ed25519"
    assert km.public_key == line
    assert km.private_key is None


def test_parse_ed25519_line_without_comment() -> None:
    _, line = _ed25519_line("")
    assert keys.parse_public(line).public_key == line


def test_ed25519_fingerprint_is_padded_base64_sha256_of_the_key_blob() -> None:
    _, line = _ed25519_line()
    blob = base64.b64decode(line.split()[1])
    fingerprint = keys.parse_public(line).fingerprint
    assert fingerprint == base64.b64encode(hashlib.sha256(blob).digest()).decode()
    assert len(fingerprint) == 44 and fingerprint.endswith("=")


def test_parse_rsa_line(rsa2048: rsa.RSAPrivateKey) -> None:
    line = rsa2048.public_key().public_bytes(ENC.OpenSSH, PUB.OpenSSH).decode() + " bob@host"
    km = keys.parse_public(line)
    assert (km.key_type, km.public_key) == ("rsa", line)


def test_imported_rsa_fingerprint_is_md5_of_the_subject_public_key_info(
    rsa2048: rsa.RSAPrivateKey,
) -> None:
    pub = rsa2048.public_key()
    line = pub.public_bytes(ENC.OpenSSH, PUB.OpenSSH).decode()
    spki = pub.public_bytes(ENC.DER, PUB.SubjectPublicKeyInfo)
    fingerprint = keys.parse_public(line).fingerprint
    assert fingerprint == _colon_hex(hashlib.md5(spki).digest())
    assert len(fingerprint.split(":")) == 16


def test_parse_pem_public_key_gives_an_openssh_line(rsa2048: rsa.RSAPrivateKey) -> None:
    pub = rsa2048.public_key()
    pem = pub.public_bytes(ENC.PEM, PUB.SubjectPublicKeyInfo).decode()
    km = keys.parse_public(pem)
    assert km.key_type == "rsa"
    assert km.public_key == pub.public_bytes(ENC.OpenSSH, PUB.OpenSSH).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "ssh-ed25519",
        "ssh-ed25519 not-base64!!! user@host",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== truncated",
        "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----",
    ],
)
def test_garbage_is_invalid_naming_public_key(text: str) -> None:
    with pytest.raises(Invalid) as info:
        keys.parse_public(text)
    assert (info.value.code, info.value.field) == (Code.INVALID, "public_key")
    assert "ssh-ed25519 AAAA" in info.value.message  # shows what a key looks like


def test_short_rsa_key_is_refused_naming_public_key() -> None:
    line = _rsa(1024).public_key().public_bytes(ENC.OpenSSH, PUB.OpenSSH).decode()
    with pytest.raises(Invalid) as info:
        keys.parse_public(line)
    assert (info.value.code, info.value.field) == (Code.INVALID, "public_key")
    assert "1024 bits" in info.value.message and "2048" in info.value.message


def test_other_key_types_are_refused_naming_public_key() -> None:
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    line = pub.public_bytes(ENC.OpenSSH, PUB.OpenSSH).decode()
    with pytest.raises(Invalid) as info:
        keys.parse_public(line)
    assert (info.value.code, info.value.field) == (Code.INVALID, "public_key")
    assert "RSA and ED25519" in info.value.message


def test_created_rsa_pair_has_a_traditional_pem_private_key() -> None:
    km = keys.create("rsa")
    assert km.key_type == "rsa"
    assert km.private_key is not None
    assert km.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert km.public_key.startswith("ssh-rsa ")


def test_created_rsa_fingerprint_is_sha1_of_the_pkcs8_private_key() -> None:
    km = keys.create("rsa")
    assert km.private_key is not None
    priv = serialization.load_pem_private_key(km.private_key.encode(), password=None)
    pkcs8 = priv.private_bytes(
        ENC.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert km.fingerprint == _colon_hex(hashlib.sha1(pkcs8).digest())
    assert len(km.fingerprint.split(":")) == 20


def test_created_rsa_public_key_matches_its_private_key() -> None:
    km = keys.create("rsa")
    assert km.private_key is not None
    priv = serialization.load_pem_private_key(km.private_key.encode(), password=None)
    assert priv.public_key().public_bytes(ENC.OpenSSH, PUB.OpenSSH).decode() == km.public_key


def test_created_ed25519_pair_round_trips_and_fingerprints_like_an_imported_one() -> None:
    km = keys.create("ed25519")
    assert km.key_type == "ed25519"
    assert km.private_key is not None
    assert km.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    priv = serialization.load_ssh_private_key(km.private_key.encode(), password=None)
    assert priv.public_key().public_bytes(ENC.OpenSSH, PUB.OpenSSH).decode() == km.public_key
    assert keys.parse_public(km.public_key).fingerprint == km.fingerprint


def test_create_of_an_unknown_type_is_invalid_naming_key_type() -> None:
    with pytest.raises(Invalid) as info:
        keys.create("dsa")
    assert (info.value.code, info.value.field) == (Code.INVALID, "key_type")


@pytest.mark.parametrize("name", ["k", "my key", "a" * 255, "laptop@home (2024)"])
def test_key_pair_names_of_printable_ascii_are_accepted(name: str) -> None:
    assert keys.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 256, "tab\there", "new\nline", "ключ"])
def test_bad_key_pair_names_are_invalid(name: str) -> None:
    with pytest.raises(Invalid) as info:
        keys.check_name(name)
    assert info.value.code == Code.INVALID
    assert info.value.field is not None
