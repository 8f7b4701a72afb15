"""Export a Hugging Face text model to ONNX once, when it is registered, so ONNX Runtime
serves it (about 2.5x faster than PyTorch eager on CPU) and the server never imports torch.

The export runs in a child process (`python -m modelworks.jobs.onnx_export FOLDER TASK OUT`)
whose address space is capped by MODELWORKS_EXPORT_MEMORY_MB. `Exporter` queues each new
version under its project and serves the projects in turn (least recently served first), a
few exports at a time and at most one per project, so one tenant's long exports never hold
back everyone else's; it records the result on the version and resumes versions left
`converting` by a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelworks.registry import Registry
    from modelworks.store import ArtifactStore

log = logging.getLogger("modelworks.jobs")
EXPORT_TIMEOUT_S = 1800
PARITY_TOLERANCE = 1e-3
EXPORT_SLOTS = 2  # exports running at once, all projects together (each uses every core)
PER_PROJECT = 1  # exports of one project running at once
MEMORY_ENV = "MODELWORKS_EXPORT_MEMORY_MB"  # the parent's setting, read by the child
OUT_OF_MEMORY = 75  # the child's exit status when it hit its memory cap
# how an allocation failure reads when the child cannot say it itself
_OOM_MARKS = (
    "MemoryError",
    "can't allocate memory",
    "Cannot allocate memory",
    "failed to map segment",
    "bad_alloc",
)
RESUMED = "resumed"  # the queue of versions a restart resumes (their project is not known)


def export_transformer(folder: Path, task: str, out: Path) -> None:
    """torch.onnx.export with dynamic batch and sequence axes; checked against PyTorch."""
    import numpy as np
    import onnxruntime as ort
    import torch
    import transformers

    from modelworks.quiet import runtime_telemetry_off
    from modelworks.runtimes.text import TextConfig, load_tokenizer, pool

    runtime_telemetry_off()

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


@dataclass(frozen=True)
class ExportJob:
    version_id: int
    source_digest: str
    task: str
    root: str
    project: Hashable


class Exporter:
    """Runs exports in child processes, off the request path, a fair share per project."""

    def __init__(
        self,
        registry: Registry,
        store: ArtifactStore,
        max_bytes: int,
        *,
        memory_mb: int = 0,
        slots: int = EXPORT_SLOTS,
        per_project: int = PER_PROJECT,
    ) -> None:
        self.registry = registry
        self.store = store
        self.max_bytes = max_bytes
        self.memory_mb = memory_mb
        self.slots = slots
        self.per_project = per_project
        self._cond = threading.Condition()
        self._queues: dict[Hashable, deque[ExportJob]] = {}
        self._running: Counter[Hashable] = Counter()
        self._started = 0
        self._last_start: dict[Hashable, int] = {}  # project -> when its last export started

    def start(
        self,
        version_id: int,
        source_digest: str,
        task: str,
        root: str = "",
        project: Hashable = RESUMED,
    ) -> None:
        """Queue an export of the version under its project; it runs when a slot and the
        project's turn come."""
        job = ExportJob(version_id, source_digest, task, root, project)
        with self._cond:
            self._queues.setdefault(project, deque()).append(job)
            self._dispatch()

    def _dispatch(self) -> None:
        """Start queued jobs while slots are free (called holding `_cond`)."""
        while sum(self._running.values()) < self.slots:
            job = self._next_job()
            if job is None:
                return
            self._running[job.project] += 1
            threading.Thread(
                target=self._work, args=(job,), name=f"onnx-export-{job.version_id}", daemon=True
            ).start()

    def _next_job(self) -> ExportJob | None:
        """The next job of the project served least recently, among those under their
        share: a project that just had a turn waits behind every other waiting project."""
        waiting = [p for p in self._queues if self._running[p] < self.per_project]
        if not waiting:
            return None
        project = min(waiting, key=lambda p: self._last_start.get(p, -1))
        queue = self._queues[project]
        job = queue.popleft()
        if not queue:
            del self._queues[project]
        self._last_start[project] = self._started
        self._started += 1
        return job

    def _work(self, job: ExportJob) -> None:
        try:
            self.run(job.version_id, job.source_digest, job.task, job.root)
        finally:
            with self._cond:
                self._running[job.project] -= 1
                if not self._running[job.project]:
                    del self._running[job.project]
                self._dispatch()
                self._cond.notify_all()

    def resume(self) -> int:
        """Restart exports a crash or restart interrupted."""
        pending = self.registry.versions_with_status("converting")
        for version_id, task, digest, signature in pending:
            self.start(version_id, digest, task, str(signature.get("root") or ""))
        return len(pending)

    def run(self, version_id: int, source_digest: str, task: str, root: str = "") -> bool:
        """Export one version now (blocking); the model folder is `root` inside the
        unpacked upload. The version ends `ready` with an ONNX artifact, or `failed` with a
        reason that names no server path."""
        from modelworks.serving.pool import runtime_message
        from modelworks.store import temp_prefix

        roots = [self.store.scratch]
        try:
            folder = self.store.unpacked(source_digest)
            roots.insert(0, folder)
            if root:
                from modelworks.archives import SafeRelPath

                folder = folder / SafeRelPath(root)
            prefix = temp_prefix("export")
            with tempfile.TemporaryDirectory(dir=self.store.scratch, prefix=prefix) as tmp:
                out = Path(tmp) / "model.onnx"
                proc = self._child(folder, task, out)
                if proc.returncode != 0 or not out.is_file():
                    reason = self._failure(proc, roots)
                    log.warning("ONNX export of version %s failed: %s", version_id, reason)
                    self.registry.set_version_status(version_id, "failed", reason)
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
                version_id, "failed", f"ONNX export failed: {runtime_message(exc, roots)}"
            )
            return False

    def _child(self, folder: Path, task: str, out: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, MEMORY_ENV: str(self.memory_mb)}
        return subprocess.run(
            [sys.executable, "-m", "modelworks.jobs.onnx_export", str(folder), task, str(out)],
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_S,
            check=False,
            env=env,
        )

    def _failure(self, proc: subprocess.CompletedProcess[str], roots: list[Path]) -> str:
        """Why the child failed, for the version's status: its last line, paths scrubbed."""
        from modelworks.serving.pool import runtime_message

        if self.memory_mb and (
            proc.returncode in (OUT_OF_MEMORY, -signal.SIGABRT, -signal.SIGKILL)
            or any(mark in proc.stderr for mark in _OOM_MARKS)
        ):
            return (
                f"ONNX export failed: the export ran out of memory ({MEMORY_ENV}="
                f"{self.memory_mb}); raise it on the server or upload a smaller model"
            )
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return (
            f"ONNX export failed: {runtime_message(RuntimeError(last), roots)}; "
            "served with PyTorch when installed"
        )

    def wait(self, timeout: float | None = None) -> None:
        """Block until every queued and running export has finished (or `timeout`)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queues and not self._running, timeout)


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space: an allocation past it fails here, in the child,
    instead of the machine running out of memory."""
    import resource

    from modelworks.memory import lift

    lift()  # the server's own data ceiling is not this child's
    if megabytes > 0:
        size = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(mark in str(exc) for mark in _OOM_MARKS)


def main(argv: list[str]) -> int:
    from modelworks.quiet import OFFLINE, no_telemetry

    if len(argv) != 3:
        print("usage: python -m modelworks.jobs.onnx_export FOLDER TASK OUT.onnx", file=sys.stderr)
        return 2
    os.environ.update(OFFLINE)  # before torch, transformers and ONNX Runtime are imported
    no_telemetry()
    limit_memory(int(os.environ.get(MEMORY_ENV) or 0))
    try:
        export_transformer(Path(argv[0]), argv[1], Path(argv[2]))
    except Exception as exc:
        if out_of_memory(exc):
            print(f"out of memory ({type(exc).__name__})", file=sys.stderr)
            return OUT_OF_MEMORY
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
