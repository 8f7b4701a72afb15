"""Job kind `export`: a Hugging Face text model, uploaded as a folder, exported to ONNX once so
ONNX Runtime serves it and the server never imports torch.

The upload's version is created `converting` in the same transaction that queues its export
job; a worker runs `python -m modelworks.recipes.export FOLDER TASK OUT` under an address-space
cap (MODELWORKS_EXPORT_MEMORY_MB), stores the ONNX file and, in the transaction that marks the
job succeeded, records it on the version (`ready`). A worker killed mid-export leaves a job
whose lease runs out; another worker exports again, and only the worker holding the job can
record the artifact, so a version gets exactly one. A final failure or a cancel marks the
version `failed` with the reason (no server paths in it).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.jobs.kinds import Apply, Plan, WorkerContext

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from modelworks.db.tables import Job, ModelVersion
    from modelworks.jobs.queue import JobQueue, JobView

KIND = "export"
EXPORT_TIMEOUT_S = 1800
MEMORY_ENV = "MODELWORKS_EXPORT_MEMORY_MB"  # the parent's setting, read by the child
OUT_OF_MEMORY = 75  # the child's exit status when it hit its memory cap
# how an allocation failure reads when the child cannot say it itself
OOM_MARKS = (
    "MemoryError",
    "can't allocate memory",
    "Cannot allocate memory",
    "failed to map segment",
    "bad_alloc",
)


def export_params(
    version_id: int, model: str, version: int, source_digest: str, task: str, root: str
) -> dict[str, Any]:
    return {
        "version_id": version_id,
        "model": model,
        "version": version,
        "source_digest": source_digest,
        "task": task,
        "root": root,
    }


def queue_export(
    queue: JobQueue, s: Session, project_id: int, model: str, v: ModelVersion, created_by: str
) -> None:
    """Queue the export of a `converting` version, in the transaction that creates it."""
    from modelworks.db.tables import Model

    m = s.get(Model, v.model_id)
    task = m.task if m is not None else "embeddings"
    root = str((v.signature or {}).get("root") or "")
    params = export_params(v.id, model, v.version, v.digest, task, root)
    queue.add(s, project_id, KIND, params, created_by=created_by)


class ExportKind:
    name = KIND

    def plan(self, job: JobView, ctx: WorkerContext, workdir: Path) -> Plan:
        from modelworks.archives import SafeRelPath

        p = job.params
        unpacked = ctx.store.unpacked(str(p["source_digest"]))
        folder = unpacked / SafeRelPath(str(p["root"])) if p.get("root") else unpacked
        out = workdir / "model.onnx"
        env = {**os.environ, MEMORY_ENV: str(ctx.settings.export_memory_mb)}
        argv = [sys.executable, "-m", "modelworks.recipes.export", str(folder), str(p["task"])]
        return Plan(
            argv=[*argv, str(out)],
            env=env,
            timeout_s=EXPORT_TIMEOUT_S,
            state={"out": str(out), "roots": [str(unpacked), str(ctx.store.scratch)]},
        )

    def finish(
        self, job: JobView, ctx: WorkerContext, plan: Plan
    ) -> tuple[dict[str, Any], Apply | None]:
        from modelworks.db.tables import ModelVersion

        out = Path(plan.state["out"])
        if not out.is_file():
            raise RuntimeError("the export wrote no ONNX file")
        blob = ctx.store.put_file(out, ctx.settings.max_upload_bytes)
        artifact = {"digest": blob.digest, "size": blob.size}
        version_id = int(job.params["version_id"])

        def apply(s: Session, _job: Job) -> None:
            v = s.get(ModelVersion, version_id)
            if v is None:
                return  # deleted meanwhile: the blob is collected with the others
            v.status = "ready"
            v.status_reason = ""
            v.artifacts = {**(v.artifacts or {}), "onnx": artifact}

        return {"model": job.params.get("model"), "onnx": artifact}, apply

    def failure(
        self, job: JobView, ctx: WorkerContext, plan: Plan, returncode: int, tail: list[str]
    ) -> tuple[str, bool]:
        """Why the child failed (its last line, paths scrubbed), and whether to try again:
        an export that ran and failed fails the same way again; one killed by a signal from
        outside (not its memory cap) may succeed."""
        from modelworks.serving.pool import runtime_message

        memory_mb = ctx.settings.export_memory_mb
        text = "\n".join(tail)
        if memory_mb and (
            returncode in (OUT_OF_MEMORY, -signal.SIGABRT) or any(m in text for m in OOM_MARKS)
        ):
            return (
                f"ONNX export failed: the export ran out of memory ({MEMORY_ENV}={memory_mb}); "
                "raise it on the server or upload a smaller model",
                False,
            )
        if returncode < 0:
            return f"ONNX export stopped by signal {-returncode}", True
        last = (tail or [f"exit status {returncode}"])[-1]
        roots = [Path(r) for r in plan.state.get("roots", [])]
        return f"ONNX export failed: {runtime_message(RuntimeError(last), roots)}", False

    def settle(self, session: Session, job: Job, status: str, error: str) -> None:
        from modelworks.db.tables import ModelVersion

        if status not in ("failed", "cancelled"):
            return
        v = session.get(ModelVersion, int((job.params or {}).get("version_id", 0)))
        if v is not None and v.status == "converting":
            v.status = "failed"
            v.status_reason = error if status == "failed" else "ONNX export cancelled"
