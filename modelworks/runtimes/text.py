"""Hugging Face text models: fast tokenizer + ONNX Runtime, on the ONNX file the version's
`export` job made. A version without one (its export failed) is not served: PyTorch is
imported only by job child processes.

Tasks: `embeddings` (pooling as sentence-transformers configures it, then optional L2
normalisation) and `text-classification` (softmax over the config's labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from modelworks.runtimes import Result
from modelworks.runtimes.onnx import providers, run, session_options
from modelworks.tensors import as_text

MAX_SEQ_CAP = 512


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class TextConfig:
    """What a sentence-transformers / transformers folder says about tokenising and pooling."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = _json(folder / "config.json")
        st = _json(folder / "sentence_bert_config.json")
        tok = _json(folder / "tokenizer_config.json")
        limits = [
            st.get("max_seq_length"),
            tok.get("model_max_length"),
            self.config.get("max_position_embeddings"),
        ]
        self.max_length = min(
            [int(x) for x in limits if isinstance(x, int) and x > 0] + [MAX_SEQ_CAP]
        )
        pooling = _json(folder / "1_Pooling" / "config.json")
        if pooling.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif pooling.get("pooling_mode_max_tokens"):
            self.pooling = "max"
        else:
            self.pooling = "mean"
        modules = folder / "modules.json"
        try:
            listed = json.loads(modules.read_text()) if modules.is_file() else []
        except ValueError:
            listed = []
        self.normalize = any(
            isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in listed
        )
        id2label = self.config.get("id2label") or {}
        self.labels = [
            str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))
        ]
        self.hidden_size = int(self.config.get("hidden_size") or 0)


def load_tokenizer(folder: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        pad_id = tokenizer.token_to_id("<pad>") or 0
    tokenizer.enable_padding(pad_id=pad_id)
    return tokenizer


class TextModel:
    def __init__(
        self,
        folder: Path,
        onnx_path: Path,
        task: str,
        signature: dict[str, Any],
        threads: int = 0,
        device: str = "auto",
    ) -> None:
        self.task = task
        self.signature = signature
        self.cfg = TextConfig(folder)
        self.tokenizer = load_tokenizer(folder, self.cfg.max_length)
        import onnxruntime as ort

        opts = session_options(onnx_path, threads)
        opts.log_severity_level = 3
        self.session: Any = ort.InferenceSession(str(onnx_path), opts, providers=providers(device))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def _forward(self, feeds: dict[str, np.ndarray], run_options: Any | None) -> np.ndarray:
        return np.asarray(run(self.session, None, feeds, run_options)[0])

    def predict(
        self,
        feeds: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        run_options: Any | None = None,
    ) -> Result:
        texts = as_text("text", feeds["text"])  # tokenizers take text: not UTF-8 is a 400
        enc = self.tokenize(texts)
        mask = enc["attention_mask"]
        tokens = mask.sum(axis=1).astype(np.int64)
        hidden = self._forward(enc, run_options)
        if self.task == "text-classification":
            logits = hidden.astype(np.float32)
            z = logits - logits.max(axis=1, keepdims=True)
            probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            labels = self.cfg.labels or [f"LABEL_{i}" for i in range(probs.shape[1])]
            best = np.array([labels[i].encode() for i in probs.argmax(axis=1)], dtype=np.object_)
            # the logits too: a caller may ask for a sigmoid or the raw scores instead
            return Result(
                {"probabilities": probs.astype(np.float32), "label": best, "_logits": logits},
                {"tokens": tokens},
            )
        emb = pool(hidden, mask, self.cfg.pooling)
        if self.cfg.normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return Result({"embedding": emb.astype(np.float32)}, {"tokens": tokens})


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(hidden.dtype)
    if mode == "max":
        return np.asarray(np.where(m > 0, hidden, -1e9).max(axis=1))
    return np.asarray((hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9))
