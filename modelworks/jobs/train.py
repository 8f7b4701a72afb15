"""Training jobs (kind `train`): checked when submitted, run by a worker as a child process of
`modelworks.recipes.train` (under torch's elastic launcher for `workers` > 1), and registered as
a new model version in the transaction that marks the job succeeded.

A submitted job names a recipe, a dataset version of its project, the target column, the
model to register under and the recipe's parameters; everything that can be checked before a
worker starts is checked here, so a bad request is a 422 at submit, not a failed job. The job
records the dataset version it trains on (name, version, digest): a later upload to the same
dataset does not change what a queued or resumed job reads.

The child checkpoints every epoch into `<home>/jobs/<id>/checkpoints`; a job whose worker
died (its lease expired) is claimed again and resumes from the newest checkpoint there. That
folder must be shared by the workers that may take a job over (one machine: it is).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelworks.errors import Forbidden, ValidationFailed
from modelworks.jobs.kinds import Apply, Plan, WorkerContext
from modelworks.names import AliasName, ModelName

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from modelworks.auth.keys import Principal
    from modelworks.db.tables import Job
    from modelworks.jobs.queue import JobView
    from modelworks.registry import Registry
    from modelworks.registry.datasets import Datasets
    from modelworks.settings import Settings

KIND = "train"
TRAIN_TIMEOUT_S = 24 * 3600.0
CLASSIFIER_METRICS = ("accuracy", "macro_f1", "roc_auc")
REGRESSOR_METRICS = ("rmse", "mae", "r2")
TASK_METRICS = {
    "tabular-classification": CLASSIFIER_METRICS,
    "tabular-regression": REGRESSOR_METRICS,
    "sequence-classification": CLASSIFIER_METRICS,
    "image-classification": CLASSIFIER_METRICS,
    "sequence-regression": REGRESSOR_METRICS,
}
_CONDITION = re.compile(r"\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


def check_promote_if(task: str, conditions: dict[str, Any]) -> dict[str, str]:
    """`{"accuracy": ">=0.9"}`: each metric of the task with a comparison and a number."""
    known = TASK_METRICS.get(task, ())
    clean: dict[str, str] = {}
    for metric, condition in conditions.items():
        if metric not in known:
            raise ValidationFailed(
                f"promote_if names {str(metric)[:40]!r}; this recipe reports {', '.join(known)}"
            )
        if not isinstance(condition, str) or not _CONDITION.fullmatch(condition):
            raise ValidationFailed(
                f"promote_if[{metric!r}] must be a comparison such as '>=0.9' "
                "(>=, >, <=, < or == and a number)"
            )
        clean[metric] = condition.strip()
    return clean


def promotion_holds(conditions: dict[str, str], metrics: dict[str, Any]) -> bool:
    """Whether every condition holds on the report's test metrics (a missing metric fails)."""
    for metric, condition in conditions.items():
        m = _CONDITION.fullmatch(condition)
        value = metrics.get(metric)
        if m is None or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        op, bound = m[1], float(m[2])
        ok = {
            ">=": value >= bound,
            ">": value > bound,
            "<=": value <= bound,
            "<": value < bound,
            "==": value == bound,
        }[op]
        if not ok:
            return False
    return True


def submit_params(
    body: dict[str, Any],
    p: Principal,
    registry: Registry,
    datasets: Datasets,
    settings: Settings,
) -> dict[str, Any]:
    """The params of a training job, from what the client sent; 4xx for anything wrong."""
    from modelworks.jobs.recipes import check_params, check_recipe

    recipe = check_recipe(str(body.get("recipe") or ""))
    params = check_params(recipe, dict(body.get("params") or {}))
    ref = body.get("dataset")
    if not isinstance(ref, str) or not ref:
        raise ValidationFailed("'dataset' is required: NAME or NAME:VERSION of a dataset")
    version = datasets.resolve(p.project_id, ref)  # another project's dataset: 404
    name = ref.partition(":")[0]
    profile = version.profile or {}
    if version.format not in recipe.formats:
        raise ValidationFailed(
            f"recipe {recipe.name!r} trains on {', '.join(recipe.formats)} datasets; "
            f"{name}:{version.version} is {version.format}"
        )
    columns = [str(c.get("name")) for c in profile.get("columns", [])]
    target = body.get("target") or profile.get("label")
    if recipe.needs_target:
        if not isinstance(target, str) or not target:
            raise ValidationFailed(
                f"'target' is required: the column to predict (one of {', '.join(columns[:20])})"
            )
        if target not in columns:
            raise ValidationFailed(
                f"dataset {name}:{version.version} has no column {target[:64]!r}; its columns "
                f"are {', '.join(columns[:20])}"
            )
    if recipe.needs_series and not (profile.get("entity") and profile.get("time")):
        raise ValidationFailed(
            f"recipe {recipe.name!r} trains on a time series: upload the dataset naming its "
            "machine and time columns (modelworks datasets push … --entity COLUMN --time COLUMN)"
        )
    model = ModelName(str(body.get("model") or ""))
    if not p.allows_model(model):
        raise Forbidden("this key is limited to other models; ask an owner for a wider key")
    existing = next((m for m in registry.list_models(p.project_id) if m.name == model), None)
    if existing is not None and existing.task != recipe.task:
        raise ValidationFailed(
            f"model {model!r} has task {existing.task!r}; recipe {recipe.name!r} makes "
            f"{recipe.task!r} models: name another model"
        )
    workers = body.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not workers >= 1:
        raise ValidationFailed("'workers' must be a whole number of ranks, at least 1")
    if workers > settings.max_train_workers:
        raise ValidationFailed(
            f"'workers' is {workers}; this server allows at most {settings.max_train_workers} "
            "ranks per job (MODELWORKS_MAX_TRAIN_WORKERS)"
        )
    promote_to = body.get("promote_to")
    if promote_to is not None:
        promote_to = AliasName(str(promote_to))
    promote_if = check_promote_if(recipe.task, dict(body.get("promote_if") or {}))
    if promote_if and promote_to is None:
        raise ValidationFailed("promote_if needs promote_to: the alias to move when it holds")
    return {
        "recipe": recipe.name,
        "task": recipe.task,
        "model": model,
        "dataset": {
            "name": name,
            "version": version.version,
            "digest": version.digest,
            "format": version.format,
        },
        "target": target,
        "group": profile.get("entity"),
        "time": profile.get("time"),
        "params": params,
        "workers": workers,
        "promote_to": promote_to,
        "promote_if": promote_if,
    }


def checkpoint_dir(settings: Settings, job_id: int) -> Path:
    return settings.home / "jobs" / str(job_id) / "checkpoints"


class TrainKind:
    name = KIND

    def plan(self, job: JobView, ctx: WorkerContext, workdir: Path) -> Plan:
        p = job.params
        data = ctx.store.local_path(str(p["dataset"]["digest"]))
        checkpoints = checkpoint_dir(ctx.settings, job.id)
        checkpoints.mkdir(parents=True, exist_ok=True)
        spec = {
            "recipe": p["recipe"],
            "data": str(data),
            "format": p["dataset"]["format"],
            "target": p.get("target"),
            "params": p["params"],
            "group": p.get("group"),
            "time": p.get("time"),
            "checkpoint_dir": str(checkpoints),
        }
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        out = workdir / "out"
        out.mkdir()
        workers = int(p.get("workers", 1))
        entry = ["-m", "modelworks.recipes.train", str(spec_path), str(out)]
        if workers > 1:
            # torch's elastic launcher: one process per rank on this machine
            launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
            argv = [sys.executable, *launcher, "--nproc-per-node", str(workers), *entry]
        else:
            argv = [sys.executable, *entry]
        return Plan(
            argv=argv,
            env=dict(os.environ),
            timeout_s=TRAIN_TIMEOUT_S,
            state={"out": str(out), "roots": [str(workdir), str(data.parent)]},
        )

    def finish(
        self, job: JobView, ctx: WorkerContext, plan: Plan
    ) -> tuple[dict[str, Any], Apply | None]:
        from modelworks.registry.service import register_in

        out = Path(plan.state["out"])
        from modelworks.registry.formats import inspect_onnx

        for name in ("model.onnx", "report.json"):
            if not (out / name).is_file():
                raise RuntimeError(f"the training run wrote no {name}")
        report = json.loads((out / "report.json").read_text())
        # the signature as an upload of this file would get it, checked the same way
        signature = inspect_onnx(out / "model.onnx")
        if report.get("labels"):
            signature["labels"] = report["labels"]
        if report.get("image_size"):
            signature["image_size"] = report["image_size"]
        if report.get("features"):  # the columns, in the order a window's last axis takes them
            signature["features"] = report["features"]
        cap = ctx.settings.max_upload_bytes
        onnx_blob = ctx.store.put_file(out / "model.onnx", cap)
        artifacts: dict[str, Any] = {}
        for key, name in (("safetensors", "model.safetensors"), ("config", "config.json")):
            if (out / name).is_file():
                blob = ctx.store.put_file(out / name, cap)
                artifacts[key] = {"digest": blob.digest, "size": blob.size}
        p = job.params
        metrics = dict(report.get("metrics") or {})
        promote = (
            p.get("promote_to") if promotion_holds(p.get("promote_if") or {}, metrics) else None
        )
        lineage = {
            "source": "training",
            "job_id": job.id,
            "recipe": p["recipe"],
            "dataset": p["dataset"],
            "target": p.get("target"),
            "params": p["params"],
            "workers": p.get("workers", 1),
        }
        project_id, model = job.project_id, str(p["model"])
        result: dict[str, Any] = {
            "model": model,
            "metrics": metrics,
            "promoted_to": promote,
            "onnx": {"digest": onnx_blob.digest, "size": onnx_blob.size},
        }

        def apply(s: Session, _job: Job) -> None:
            v = register_in(
                s,
                project_id,
                model,
                onnx_blob,
                task=str(p["task"]),
                format="onnx",
                signature=signature,
                metrics={**metrics, "report": report},
                lineage=lineage,
                artifacts=artifacts,
                description=f"trained by job {job.id} ({p['recipe']})",
                created_by=job.created_by,
                alias=promote,
            )
            result["version"] = v.version  # the queue records the result after `apply`

        # the run is over: a retry of this job (if recording it fails) starts afresh
        shutil.rmtree(checkpoint_dir(ctx.settings, job.id).parent, ignore_errors=True)
        return result, apply

    def failure(
        self, job: JobView, ctx: WorkerContext, plan: Plan, returncode: int, tail: list[str]
    ) -> tuple[str, bool]:
        """The child's last line, paths scrubbed; a run killed by a signal from outside may
        succeed on another attempt (resuming from its checkpoint), one that failed on its data
        or its loss will not."""
        from modelworks.serving.pool import runtime_message

        if returncode < 0 and -returncode in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            return f"training stopped by signal {-returncode}", True
        said = [line for line in tail if line.startswith("training failed:")]
        last = (said or tail or [f"exit status {returncode}"])[-1]
        roots = [Path(r) for r in plan.state.get("roots", [])]
        message = runtime_message(RuntimeError(last), roots)
        if not message.startswith("training failed"):
            message = f"training failed: {message}"
        return message, False

    def settle(self, session: Session, job: Job, status: str, error: str) -> None:
        """A job that ends failed or cancelled has registered nothing (its checkpoints stay
        under `<home>/jobs/<id>` for a look; they are removed when a run succeeds)."""
        return None
