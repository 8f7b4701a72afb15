"""Encryption at rest for artifacts: AES-256-GCM in 1 MiB chunks (cryptography's AEAD).

Layout: `MWAES1\\n` + 8-byte random file nonce, then each chunk's ciphertext with its 16-byte
tag. A chunk's nonce is the file nonce plus its index; the index and a last-chunk flag are
authenticated, so chunks cannot be reordered, dropped or the file cut short unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from modelworks.errors import DecryptionFailed

MAGIC = b"MWAES1\n"
CHUNK = 1024 * 1024
TAG = 16


def read_key(path: Path) -> bytes:
    """32 raw bytes, or the same as 64 hex or 44 base64 characters."""
    raw = path.read_bytes()
    if len(raw) == 32:
        return raw
    text = raw.strip()
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise ValueError("the encryption key file must hold 32 bytes (raw, hex or base64)")


def new_key_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(32)) + b"\n")


class ArtifactCipher:
    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> ArtifactCipher:
        return cls(read_key(path))

    @staticmethod
    def _aad(index: int, last: bool) -> bytes:
        return index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")

    def encrypt_file(self, src: Path, dst: Path) -> None:
        file_nonce = secrets.token_bytes(8)
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            fout.write(MAGIC + file_nonce)
            index = 0
            chunk = fin.read(CHUNK)
            while True:
                nxt = fin.read(CHUNK)
                last = not nxt
                nonce = file_nonce + index.to_bytes(4, "big")
                fout.write(self._aead.encrypt(nonce, chunk, self._aad(index, last)))
                if last:
                    break
                chunk, index = nxt, index + 1
            fout.flush()
            os.fsync(fout.fileno())

    def decrypt_file(self, src: Path, dst: Path) -> None:
        from cryptography.exceptions import InvalidTag

        with open(src, "rb") as fin, open(dst, "xb") as fout:
            head = fin.read(len(MAGIC) + 8)
            if not head.startswith(MAGIC):
                raise DecryptionFailed("artifact is not encrypted with this store's format")
            file_nonce = head[len(MAGIC) :]
            index = 0
            block = fin.read(CHUNK + TAG)
            while True:
                nxt = fin.read(CHUNK + TAG)
                last = not nxt
                nonce = file_nonce + index.to_bytes(4, "big")
                try:
                    fout.write(self._aead.decrypt(nonce, block, self._aad(index, last)))
                except InvalidTag:
                    raise DecryptionFailed(
                        "artifact failed authentication: wrong encryption key or tampered file"
                    ) from None
                if last:
                    break
                block, index = nxt, index + 1
