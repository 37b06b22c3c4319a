"""The cluster's certificates (``cryptography``): the controller's own certificate authority,
the certificates it issues, and the TLS contexts both sides use.

- The CA lives in the controller's state directory (``pki/ca.key`` 0600, ``pki/ca.crt``).
- A node makes its key and a certificate request at join; the CA signs it for *server* use
  only (extended key usage serverAuth), naming the node's address, so a node's certificate
  cannot be used to call another node.
- The controller calls nodes with its own certificate, issued for *client* use only; an agent
  accepts only client certificates from its CA with that usage (OpenSSL checks the purpose).
- The API, when it listens beyond loopback, serves HTTPS with a CA-issued server certificate;
  the CLI and the agents verify it against ``ca.crt``.

This module is shared by the controller and the agent and imports neither."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.errors import Invalid, Unauthorized
from corral.fsutil import atomic_write

CA_DAYS = 3650
CERT_DAYS = 825
CONTROLLER_CN = "corral-controller"
TOKEN_PREFIX = "K1"


def split_token(token: str) -> tuple[str, str]:
    """(secret, CA fingerprint) of a join token ``K1.<secret>.<sha256 of the CA certificate>``,
    or Unauthorized naming the fix."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not re.fullmatch(r"[0-9a-f]{64}", parts[2]):
        raise Unauthorized(
            "join token refused: it is not a Corral join token (K1.<secret>.<fingerprint>); "
            "copy it whole from `corral node token` on the controller"
        )
    return parts[1], parts[2]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(pem: bytes | str) -> str:
    """sha256 of a certificate's DER encoding, in hex (what a join token carries)."""
    data = pem.encode() if isinstance(pem, str) else pem
    cert = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A certificate request for ``name`` (the CA decides what the certificate names)."""
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM)


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


@dataclass
class CertificateAuthority:
    """The controller's CA, kept in ``directory`` (made on first use)."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.pem)

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "Corral") -> CertificateAuthority:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return cls(directory, key, cert)
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        atomic_write(key_path, key_pem(key), 0o600)  # the key first: a cert without it is useless
        atomic_write(cert_path, cert_pem(cert), 0o644)
        return cls(directory, key, cert)

    def sign(
        self, request_pem: bytes | str, common_name: str, hosts: list[str], usage: str
    ) -> bytes:
        """A certificate for the key in ``request_pem``: ``usage`` is ``server`` or
        ``client``; ``hosts`` (addresses or DNS names) go into subjectAltName."""
        data = request_pem.encode() if isinstance(request_pem, str) else request_pem
        try:
            req = x509.load_pem_x509_csr(data)
        except ValueError as err:
            raise Invalid(
                f"certificate request: not a PEM CSR ({err})", field="certificate_request"
            ) from err
        if not req.is_signature_valid:
            raise Invalid(
                "certificate request: its signature does not match its key",
                field="certificate_request",
            )
        pub = req.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise Invalid(
                "certificate request: the key must be an elliptic-curve key (as `corral node "
                "join` makes)",
                field="certificate_request",
            )
        return self._issue(pub, common_name, hosts, usage)

    def _issue(
        self, public_key: ec.EllipticCurvePublicKey, common_name: str, hosts: list[str], usage: str
    ) -> bytes:
        eku = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku[usage]]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_alt_names(hosts)), critical=False
            )
        return cert_pem(builder.sign(self.key, hashes.SHA256()))

    def own(self, stem: str, common_name: str, hosts: list[str], usage: str) -> tuple[Path, Path]:
        """A key and certificate of the controller's own (``<stem>.key``/``.crt`` beside the
        CA), made once and made again when the names it must carry changed."""
        key_path, cert_path = self.directory / f"{stem}.key", self.directory / f"{stem}.crt"
        if key_path.exists() and cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            try:
                have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                current = list(have)
            except x509.ExtensionNotFound:
                current = []
            fresh = cert.not_valid_after_utc > _now() + dt.timedelta(days=30)
            if fresh and set(current) == set(_alt_names(hosts)):
                return key_path, cert_path
        key = new_key()
        atomic_write(key_path, key_pem(key), 0o600)
        atomic_write(cert_path, self._issue(key.public_key(), common_name, hosts, usage), 0o644)
        return key_path, cert_path


# -- TLS contexts ------------------------------------------------------------------------------
def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """Serving TLS; with ``ca`` every client must present a certificate it issued for client
    use."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Calling a server whose certificate ``ca`` issued (names checked), presenting our own
    certificate when given."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx
