"""Access-key secrets sealed in the database: SigV4 needs the secret itself to check a
signature, so it cannot be a one-way hash; it is stored encrypted (AES-256-GCM, the access key
id as associated data, so a sealed secret moved to another row does not open) with a key kept
in a file beside the database, 0600. A copy of the database alone hands out no secret."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corral.errors import EnvironmentProblem
from corral.fsutil import atomic_write

PREFIX = "v1:"


class SecretBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a secret box key is 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """The key in ``path``, made (0600) when there is none."""
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = secrets.token_bytes(32)
            atomic_write(path, key, 0o600)
        if len(key) != 32:
            raise EnvironmentProblem(
                f"{path} holds {len(key)} bytes, not a 32-byte key; restore it from a backup "
                "(without it the stored access keys cannot be checked)"
            )
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        return cls(key)

    @staticmethod
    def is_sealed(value: str) -> bool:
        return value.startswith(PREFIX)

    def seal(self, key_id: str, secret: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), key_id.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, key_id: str, value: str) -> str | None:
        """The secret, or None when ``value`` was not sealed for ``key_id`` with this key."""
        if not self.is_sealed(value):
            return None
        try:
            raw = base64.urlsafe_b64decode(value[len(PREFIX) :])
            return self._aead.decrypt(raw[:12], raw[12:], key_id.encode()).decode()
        except (InvalidTag, ValueError):
            return None
