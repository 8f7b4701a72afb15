"""Export a Hugging Face text model to ONNX once, when it is registered, so ONNX Runtime
serves it (about 2.5x faster than PyTorch eager on CPU) and the server never imports torch.

The export runs in a child process (`python -m modelworks.jobs.onnx_export FOLDER TASK OUT`);
`Exporter` starts it for each new version, records the result on the version, and resumes
versions left `converting` by a restart.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelworks.registry import Registry
    from modelworks.store import ArtifactStore

log = logging.getLogger("modelworks.jobs")
EXPORT_TIMEOUT_S = 1800
PARITY_TOLERANCE = 1e-3


def export_transformer(folder: Path, task: str, out: Path) -> None:
    """torch.onnx.export with dynamic batch and sequence axes; checked against PyTorch."""
    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers

    from modelworks.runtimes.text import TextConfig, load_tokenizer, pool

    cls = (
        transformers.AutoModelForSequenceClassification
        if task == "text-classification"
        else transformers.AutoModel
    )
    # eager attention traces to plain ops that every ONNX Runtime build runs
    model = cls.from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, attn_implementation="eager"
    )
    model.eval()
    cfg = TextConfig(folder)
    tokenizer = load_tokenizer(folder, cfg.max_length)
    enc = tokenizer.encode_batch(
        ["A pump bearing runs hot.", "Replace the worn conveyor belt now."]
    )
    sample = {
        "input_ids": torch.tensor([e.ids for e in enc]),
        "attention_mask": torch.tensor([e.attention_mask for e in enc]),
        "token_type_ids": torch.tensor([e.type_ids for e in enc]),
    }
    names = ["input_ids", "attention_mask"]
    if model.config.type_vocab_size if hasattr(model.config, "type_vocab_size") else False:
        names.append("token_type_ids")
    output = "logits" if task == "text-classification" else "last_hidden_state"

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args: Any) -> Any:
            return getattr(self.inner(**dict(zip(names, args, strict=True))), output)

    wrapped = Wrapped().eval()  # export restores the wrapper's mode: it must be eval too
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if task == "text-classification" else {0: "batch", 1: "sequence"}
    args = tuple(sample[n] for n in names)
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            args,
            str(out),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        expected = wrapped(*args).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: sample[n].numpy() for n in names})[0]
    mask = sample["attention_mask"].numpy()
    if task != "text-classification":
        expected, got = pool(expected, mask, "mean"), pool(got, mask, "mean")
    diff = float(np.abs(expected - got).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.2e}")


class Exporter:
    """Runs exports in child processes, one at a time, off the request path."""

    def __init__(self, registry: Registry, store: ArtifactStore, max_bytes: int) -> None:
        self.registry = registry
        self.store = store
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(
        self, version_id: int, source_digest: str, task: str, root: str = ""
    ) -> threading.Thread:
        t = threading.Thread(
            target=self.run,
            args=(version_id, source_digest, task, root),
            name=f"onnx-export-{version_id}",
            daemon=True,
        )
        self._threads.append(t)
        t.start()
        return t

    def resume(self) -> int:
        """Restart exports a crash or restart interrupted."""
        pending = self.registry.versions_with_status("converting")
        for version_id, task, digest, signature in pending:
            self.start(version_id, digest, task, str(signature.get("root") or ""))
        return len(pending)

    def run(self, version_id: int, source_digest: str, task: str, root: str = "") -> bool:
        """Export one version; the model folder is `root` inside the unpacked upload."""
        with self._lock:  # one export at a time: each one uses every core
            try:
                folder = self.store.unpacked(source_digest)
                if root:
                    from modelworks.archives import SafeRelPath

                    folder = folder / SafeRelPath(root)
                with tempfile.TemporaryDirectory(dir=self.store.scratch) as tmp:
                    out = Path(tmp) / "model.onnx"
                    proc = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "modelworks.jobs.onnx_export",
                            str(folder),
                            task,
                            str(out),
                        ],
                        capture_output=True,
                        text=True,
                        timeout=EXPORT_TIMEOUT_S,
                        check=False,
                    )
                    if proc.returncode != 0 or not out.is_file():
                        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                        log.warning("ONNX export of version %s failed: %s", version_id, last)
                        kind = last.split(":", 1)[0] if ":" in last else "ExportError"
                        self.registry.set_version_status(
                            version_id,
                            "failed",
                            f"ONNX export failed ({kind[:60]}); served with PyTorch when installed",
                        )
                        return False
                    blob = self.store.put_file(out, self.max_bytes)
                self.registry.set_version_status(
                    version_id,
                    "ready",
                    artifacts={"onnx": {"digest": blob.digest, "size": blob.size}},
                )
                return True
            except Exception as exc:
                log.exception("ONNX export of version %s failed", version_id)
                self.registry.set_version_status(
                    version_id, "failed", f"ONNX export failed ({type(exc).__name__})"
                )
                return False

    def wait(self, timeout: float | None = None) -> None:
        for t in list(self._threads):
            t.join(timeout)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m modelworks.jobs.onnx_export FOLDER TASK OUT.onnx", file=sys.stderr)
        return 2
    export_transformer(Path(argv[0]), argv[1], Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
