"""Hugging Face text-model folders and archives built inside the tests (seeded, offline)."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = [
    "The spindle bearing on CNC mill 4 overheats after two hours of operation.",
    "Hydraulic press 7 loses pressure during the clamping stroke.",
    "Replace the worn drive belt on conveyor line B before the night shift.",
]
LABELS = ["mechanical", "electrical", "hydraulic"]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def build_classifier(folder: Path, tokenizer_from: Path) -> Path:
    """A tiny seeded BERT sequence classifier (3 labels) with MiniLM's tokenizer."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_from / "tokenizer.json")).get_vocab_size()
    options: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "num_labels": len(LABELS),
        "id2label": dict(enumerate(LABELS)),
        "label2id": {label: i for i, label in enumerate(LABELS)},
    }
    config = transformers.BertConfig(**options)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_from / name, folder / name)
    return folder


def pytorch_probabilities(folder: Path, texts: list[str]) -> np.ndarray:
    """softmax(logits) of the saved classifier, run by PyTorch one text at a time."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model: Any = transformers.BertForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True
    )
    model.eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            logits = model(**tokenizer(text, return_tensors="pt")).logits
            rows.append(torch.softmax(logits, dim=-1)[0].numpy())
    return np.stack(rows)


def pack_tar_gz(folder: Path, out: Path, top: str) -> Path:
    """A .tar.gz of `folder` with every file under the single top-level directory `top/`."""
    with tarfile.open(out, "w:gz", compresslevel=1) as tf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tf.add(path, arcname=f"{top}/{path.relative_to(folder).as_posix()}")
    return out


def zip_members(out: Path, members: dict[str, bytes | Path]) -> Path:
    """A zip holding `members` (name -> bytes, or a file to copy)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, content in members.items():
            zf.writestr(name, content.read_bytes() if isinstance(content, Path) else content)
    return out


def fake_safetensors() -> bytes:
    """A small but well-formed safetensors file (one FP32 tensor)."""
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    buf = io.BytesIO()
    buf.write(len(header).to_bytes(8, "little"))
    buf.write(header)
    buf.write(np.zeros(2, np.float32).tobytes())
    return buf.getvalue()
