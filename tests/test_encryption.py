"""Encryption at rest: blobs in the store are AES-GCM ciphertext, models still serve, the
digest is still checked, and a wrong key or a tampered blob is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from modelworks.api.app import create_app
from modelworks.api.services import Services
from modelworks.cli import app as cli
from modelworks.client import Client
from modelworks.crypto import ArtifactCipher, DecryptionFailed, new_key_file, read_key
from modelworks.db import upgrade
from modelworks.settings import Settings
from tests.asgi import SyncASGITransport
from tests.models import linear_onnx, linear_reference


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    r = CliRunner().invoke(cli, ["store-key", str(tmp_path / "store.key")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "store.key").stat().st_mode & 0o777 == 0o600
    return tmp_path / "store.key"


def test_blobs_are_ciphertext_and_models_serve(tmp_path: Path, key_file: Path) -> None:
    settings = Settings(
        home=tmp_path / "h", auth=False, allowed_hosts="*", encryption_key_file=key_file
    )
    upgrade(settings.resolved_database_url)
    svc = Services.build(settings)
    t = SyncASGITransport(create_app(settings, svc))
    try:
        with Client("http://testserver", transport=t) as c:
            model_file = linear_onnx(tmp_path / "m.onnx")
            c.create_model("m")
            v = c.push("m", model_file)
            blob = svc.store.root / "blobs" / "sha256" / v["digest"][7:9] / v["digest"][9:]
            stored = blob.read_bytes()
            assert stored.startswith(b"MWAES1\n")
            assert model_file.read_bytes() not in stored
            assert v["size"] == model_file.stat().st_size  # sizes and digests are of the plaintext
            x = np.ones((2, 4), np.float32)
            np.testing.assert_allclose(c.infer("m", {"x": x})["y"], linear_reference(x), rtol=1e-5)
            # plaintext copies live outside the store
            assert not any(svc.store.root.rglob(v["digest"][7:]))
    finally:
        t.close()
        svc.close()


def test_tampered_blob_and_wrong_key_are_refused(tmp_path: Path, key_file: Path) -> None:
    cipher = ArtifactCipher.from_file(key_file)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(bytes(range(256)) * 9000)  # > 2 chunks
    sealed = tmp_path / "sealed.bin"
    cipher.encrypt_file(plain, sealed)
    back = tmp_path / "back.bin"
    cipher.decrypt_file(sealed, back)
    assert back.read_bytes() == plain.read_bytes()

    tampered = bytearray(sealed.read_bytes())
    tampered[100] ^= 1
    (tmp_path / "t.bin").write_bytes(tampered)
    with pytest.raises(DecryptionFailed):
        cipher.decrypt_file(tmp_path / "t.bin", tmp_path / "t.out")
    # cut at a chunk boundary: the last-chunk flag catches the truncation
    (tmp_path / "cut.bin").write_bytes(sealed.read_bytes()[: 7 + 8 + 1024 * 1024 + 16])
    with pytest.raises(DecryptionFailed):
        cipher.decrypt_file(tmp_path / "cut.bin", tmp_path / "cut.out")
    new_key_file(tmp_path / "other.key")
    with pytest.raises(DecryptionFailed, match="wrong encryption key"):
        ArtifactCipher.from_file(tmp_path / "other.key").decrypt_file(sealed, tmp_path / "w.out")


def test_key_file_formats(tmp_path: Path) -> None:
    raw = bytes(range(32))
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "hex").write_text(raw.hex() + "\n")
    assert read_key(tmp_path / "raw") == read_key(tmp_path / "hex") == raw
    (tmp_path / "short").write_bytes(b"too short")
    with pytest.raises(ValueError, match="32 bytes"):
        read_key(tmp_path / "short")
    r = CliRunner().invoke(cli, ["store-key", str(tmp_path / "raw")])
    assert r.exit_code == 1 and "never overwritten" in r.output
