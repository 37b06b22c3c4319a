"""The CLI's own SSH key (~/.config/corral/id_ed25519), added to every instance it runs so
`corral ssh` just works, the way Multipass does it."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from corral.client import USER_CONFIG

KEY = USER_CONFIG / "id_ed25519"
KNOWN_HOSTS = USER_CONFIG / "known_hosts"


def ensure() -> tuple[Path, str]:
    """The private key path and the public key line (created on first use)."""
    pub = KEY.with_suffix(".pub")
    if not KEY.exists() or not pub.exists():
        KEY.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        priv = ed25519.Ed25519PrivateKey.generate()
        data = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        tmp = KEY.with_name(".id_ed25519.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        line = (
            priv.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        pub.write_text(f"{line} corral-cli@{os.uname().nodename}\n")
        os.replace(tmp, KEY)
    return KEY, pub.read_text().strip()
