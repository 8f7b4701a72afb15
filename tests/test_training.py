"""Training: the tabular recipes run as a child process (alone and as two DDP ranks), resume
from their checkpoints, fail clearly; a `train` job submitted over REST registers exactly one
version with its report and lineage, served from raw columns over OIP and TF-Serving."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from modelworks.api.services import Services
from modelworks.errors import ValidationFailed
from modelworks.jobs.recipes import RECIPES, check_params, check_recipe
from tests.conftest import free_port

PARAMS: dict[str, Any] = {
    "epochs": 6,
    "batch_size": 32,
    "learning_rate": 0.01,
    "hidden": [16],
    "dropout": 0.0,
    "weight_decay": 0.0,
    "patience": 50,
    "seed": 0,
    "validation_fraction": 0.15,
    "test_fraction": 0.15,
    "max_categories": 10,
}


def sensor_frame(n: int = 400, regression: bool = False) -> pd.DataFrame:
    """Separable on purpose: a machine line, a temperature and a vibration decide the label."""
    rng = np.random.default_rng(0)
    temp, vib = rng.normal(size=n), rng.normal(size=n)
    line = np.array([i % 4 for i in range(n)])
    score = temp + 0.5 * vib + (line == 1) * 1.0
    df = pd.DataFrame({"line": [f"l{i}" for i in line], "temp": temp, "vib": vib})
    if regression:
        df["wear"] = 3.0 * score + 10.0 + rng.normal(scale=0.05, size=n)
    else:
        df["label"] = np.where(score > 0.3, "fail", "ok")
    df.loc[5, "temp"] = np.nan
    return df


def run_child(
    tmp: Path, recipe: str, df: pd.DataFrame, target: str, ranks: int = 1, **params: Any
) -> tuple[subprocess.CompletedProcess[str], Path]:
    data = tmp / "data.csv"
    if not data.exists():
        df.to_csv(data, index=False)
    spec = {
        "recipe": recipe,
        "data": str(data),
        "format": "csv",
        "target": target,
        "group": None,
        "checkpoint_dir": str(tmp / "checkpoints"),
        "params": {**PARAMS, **params},
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    out = tmp / f"out-{ranks}-{len(list(tmp.glob('out-*')))}"
    entry = ["-m", "modelworks.recipes.train", str(tmp / "spec.json"), str(out)]
    if ranks > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
        entry = [*launcher, "--nproc-per-node", str(ranks), *entry]
    proc = subprocess.run([sys.executable, *entry], capture_output=True, text=True, timeout=300)
    return proc, out


def report(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "report.json").read_text()))


def test_classification_exports_raw_column_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort

    proc, out = run_child(tmp_path, "tabular-classification", sensor_frame(), "label")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = report(out)
    assert r["metrics"]["accuracy"] >= 0.9 and r["labels"] == ["fail", "ok"]
    assert r["onnx_max_abs_diff"] <= 1e-4
    assert len(r["metrics"]["confusion_matrix"]) == 2 and r["rows"]["train"] == 280
    events = [json.loads(x.split(" ", 1)[1]) for x in proc.stdout.splitlines() if x.startswith("@")]
    assert [e["metrics"]["epoch"] for e in events if e.get("phase") == "training"] == list(
        range(1, 7)
    )
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sorted(i.name for i in session.get_inputs()) == ["line", "temp", "vib"]
    feeds = {
        "line": np.array(["l1", "l0", "never-seen", ""], dtype=object),
        "temp": np.array([2.0, -2.0, np.nan, np.inf], dtype=np.float32),
        "vib": np.array([0.0, 0.0, 0.0, 0.0], dtype=np.float32),
    }
    label, probs = session.run(["label", "probabilities"], feeds)
    assert list(label[:2]) == ["fail", "ok"]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_regression(tmp_path: Path) -> None:
    proc, out = run_child(
        tmp_path, "tabular-regression", sensor_frame(regression=True), "wear", epochs=30
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = report(out)["metrics"]
    assert metrics["r2"] > 0.9 and set(metrics) == {"rmse", "mae", "r2"}


def test_two_ranks_reach_the_metrics_of_one(tmp_path: Path) -> None:
    """Same seed, same global batch: DistributedSampler deals the two ranks the two halves of
    each global batch one rank takes whole, so the runs differ only in the order sums are
    made in. Tolerance: 1e-3 on the test loss-free metrics and equal confusion matrices."""
    df = sensor_frame()
    one, out1 = run_child(tmp_path, "tabular-classification", df, "label")
    (tmp_path / "checkpoints").rename(tmp_path / "checkpoints-1")
    two, out2 = run_child(tmp_path, "tabular-classification", df, "label", ranks=2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = report(out1), report(out2)
    assert b["world_size"] == 2 and a["world_size"] == 1
    for metric in ("accuracy", "macro_f1", "roc_auc"):
        assert abs(a["metrics"][metric] - b["metrics"][metric]) <= 1e-3, metric
    assert a["metrics"]["confusion_matrix"] == b["metrics"]["confusion_matrix"]


def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """A run stopped after epoch 3 leaves on disk exactly what a run of 3 epochs leaves; the
    same job run again (6 epochs) continues from that checkpoint and must end where a straight
    6-epoch run ends. Dropout is on, so the restored random state matters too."""
    df = sensor_frame()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight, out_a = run_child(tmp_path / "a", "tabular-classification", df, "label", dropout=0.2)
    first, _ = run_child(
        tmp_path / "b", "tabular-classification", df, "label", dropout=0.2, epochs=3
    )
    assert (
        sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())[-1] == "epoch-00002.pt"
    )
    resumed, out_b = run_child(tmp_path / "b", "tabular-classification", df, "label", dropout=0.2)
    assert straight.returncode == first.returncode == resumed.returncode == 0
    assert "resuming after epoch 3" in resumed.stdout
    resumed_epochs = [
        json.loads(x.split(" ", 1)[1]).get("metrics", {}).get("epoch")
        for x in resumed.stdout.splitlines()
        if x.startswith("@")
    ]
    assert [e for e in resumed_epochs if e] == [4, 5, 6]
    assert report(out_a)["metrics"] == report(out_b)["metrics"]


def test_bad_data_and_a_diverging_loss_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = sensor_frame()
    df["label"] = "ok"
    proc, _ = run_child(tmp_path, "tabular-classification", df, "label")
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines()[-1].startswith("training failed: the training split")

    import torch

    from modelworks.recipes import tabular
    from modelworks.recipes.common import Ranks, TrainingFailed

    class Diverging(torch.nn.CrossEntropyLoss):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return super().forward(a, b) * float("nan")

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", Diverging)
    good = sensor_frame()
    good.to_csv(tmp_path / "good.csv", index=False)
    spec = {
        "recipe": "tabular-classification",
        "data": str(tmp_path / "good.csv"),
        "format": "csv",
        "target": "label",
        "group": None,
        "checkpoint_dir": str(tmp_path / "nan-checkpoints"),
        "params": PARAMS,
    }
    with pytest.raises(TrainingFailed) as info:
        tabular.train(spec, tmp_path / "nan-out", Ranks())
    assert info.value.status == 3
    assert "loss became nan at epoch 1 (step 1); lower learning_rate" in str(info.value)
    assert not (tmp_path / "nan-out").exists()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"epochs": 0}, "'epochs' must be a whole number from 1 to 500"),
        ({"learning_rate": "fast"}, "'learning_rate' must be a number from 1e-06 to 1"),
        ({"hidden": [64, 0]}, "'hidden' must be a list"),
        ({"epochs": True}, "'epochs'"),
        ({"colour": 1}, "unknown parameter 'colour'"),
        ({"validation_fraction": 0.5, "test_fraction": 0.45}, "at least 10%"),
    ],
)
def test_params_are_checked(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationFailed, match=match):
        check_params(RECIPES["tabular-classification"], params)


def test_unknown_recipe_and_no_torch_at_submit() -> None:
    with pytest.raises(ValidationFailed, match="tabular-classification, tabular-regression"):
        check_recipe("gpt")
    code = (
        "import sys, modelworks.jobs.recipes, modelworks.jobs.train; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# the job, end to end ----------------------------------------------------------------------
def submit(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/v1/jobs", json={"kind": "train", **body})


def push(http: httpx.Client, name: str, df: pd.DataFrame) -> None:
    r = http.post(
        "/api/v1/datasets",
        files={"file": (f"{name}.csv", df.to_csv(index=False).encode())},
        data={"name": name},
    )
    assert r.status_code == 201, r.text


def test_a_train_job_registers_one_version_served_from_raw_columns(
    http: httpx.Client, services: Services
) -> None:
    push(http, "sensors", sensor_frame())
    r = submit(
        http,
        recipe="tabular-classification",
        dataset="sensors",
        model="press-failure",
        params={"epochs": 5, "learning_rate": 0.01, "hidden": [16]},
        promote_to="production",
        promote_if={"accuracy": ">=0.8"},
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["params"]["dataset"]["version"] == 1 and job["params"]["target"] == "label"
    assert services.run_jobs(timeout_s=300) == 1
    done = http.get(f"/api/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["version"] == 1 and done["result"]["promoted_to"] == "production"
    v = http.get("/api/v1/models/press-failure/versions/1").json()
    assert v["lineage"]["job_id"] == job["id"] and v["lineage"]["dataset"]["name"] == "sensors"
    assert v["metrics"]["accuracy"] >= 0.8 and v["metrics"]["report"]["labels"] == ["fail", "ok"]
    assert v["aliases"] == ["production"] and set(v["artifacts"]) == {"safetensors", "config"}
    assert not (services.settings.home / "jobs" / str(job["id"])).exists()

    # OIP v2: one named tensor per column
    infer = {
        "inputs": [
            {"name": "line", "datatype": "BYTES", "shape": [2], "data": ["l1", "l0"]},
            {"name": "temp", "datatype": "FP32", "shape": [2], "data": [2.0, -2.0]},
            {"name": "vib", "datatype": "FP32", "shape": [2], "data": [0.0, 0.0]},
        ]
    }
    out = http.post("/v2/models/press-failure/infer", json=infer).json()
    labels = next(o for o in out["outputs"] if o["name"] == "label")["data"]
    assert labels == ["fail", "ok"]
    # TF-Serving: raw rows, :predict and :classify
    rows = [{"line": "l1", "temp": 2.0, "vib": 0.0}, {"line": "l0", "temp": -2.0, "vib": 0.0}]
    pred = http.post("/v1/models/press-failure:predict", json={"instances": rows}).json()
    assert [p["label"] for p in pred["predictions"]] == ["fail", "ok"]
    cls = http.post("/v1/models/press-failure:classify", json={"examples": rows}).json()
    assert [max(r, key=lambda x: x[1])[0] for r in cls["results"]] == ["fail", "ok"]


def test_submit_is_checked_before_anything_runs(http: httpx.Client, services: Services) -> None:
    push(http, "sensors", sensor_frame())
    base = {"recipe": "tabular-classification", "dataset": "sensors", "model": "m"}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**base, "recipe": "gpt"}, 422, "unknown recipe"),
        ({**base, "dataset": "nope"}, 404, "nope"),
        ({**base, "target": "x"}, 422, "no column 'x'"),
        ({**base, "workers": 99}, 422, "MODELWORKS_MAX_TRAIN_WORKERS"),
        ({**base, "params": {"epochs": 9999}}, 422, "from 1 to 500"),
        ({**base, "promote_if": {"accuracy": ">=0.9"}}, 422, "promote_to"),
        (
            {**base, "promote_to": "p", "promote_if": {"loss": "<1"}},
            422,
            "accuracy, macro_f1, roc_auc",
        ),
    ]
    for body, status, hint in cases:
        r = submit(http, **body)
        assert r.status_code == status, (body, r.text)
        assert hint in r.json()["error"]["message"], r.text
    r = http.post("/api/v1/jobs", json={"kind": "export"})
    assert r.status_code == 422 and "unknown job kind" in r.text
    assert services.jobs.list_jobs(services.default_project_id) == []


def test_a_failed_run_registers_nothing(http: httpx.Client, services: Services) -> None:
    """Text in a regression target passes the submit check (the column exists) and fails in
    the run: failed at once with the child's reason, not retried, nothing registered."""
    push(http, "sensors", sensor_frame())
    r = submit(http, recipe="tabular-regression", dataset="sensors", model="m", target="label")
    assert r.status_code == 201
    services.run_jobs(timeout_s=300)
    job = http.get(f"/api/v1/jobs/{r.json()['id']}").json()
    assert job["status"] == "failed" and job["attempts"] == 1
    assert job["error"] == "training failed: the target 'label' is not numeric"
    assert http.get("/api/v1/models/m").status_code == 404


def test_cli_train_follow(
    live_server: Any, admin_key: str, services: Services, tmp_path: Path
) -> None:
    """`modelworks train … --follow` submits, then follows to the end (exit 0)."""
    data = tmp_path / "s.csv"
    sensor_frame().to_csv(data, index=False)
    env = {**os.environ, "MODELWORKS_URL": live_server.url, "MODELWORKS_API_KEY": admin_key}
    cli = [sys.executable, "-m", "modelworks"]
    subprocess.run(
        [*cli, "datasets", "push", "sensors", str(data)], env=env, check=True, capture_output=True
    )
    proc = subprocess.Popen(
        [
            *cli,
            "train",
            "tabular-classification",
            "--dataset",
            "sensors",
            "--model",
            "cli-m",
            "--param",
            "epochs=3",
            "--param",
            "hidden=[8]",
            "--follow",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not services.jobs.list_jobs(services.default_project_id):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.1)
    services.run_jobs(timeout_s=300)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "succeeded" in stdout


# across real processes ---------------------------------------------------------------------
EPOCHS = 40


def _long_job(inst: Any, tmp_path: Path, model: str) -> int:
    data = tmp_path / "sensors.csv"
    sensor_frame(3000).to_csv(data, index=False)
    with data.open("rb") as f:
        r = inst.http.post("/api/v1/datasets", files={"file": f}, data={"name": "sensors"})
    assert r.status_code == 201, r.text
    r = inst.http.post(
        "/api/v1/jobs",
        json={
            "kind": "train",
            "recipe": "tabular-classification",
            "dataset": "sensors",
            "model": model,
            # about 0.4 s an epoch on two cores: long enough to be killed in the middle
            "params": {"epochs": EPOCHS, "patience": 100, "batch_size": 8, "hidden": [128, 128]},
        },
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _epochs_done(inst: Any, job_id: int) -> int:
    job = inst.http.get(f"/api/v1/jobs/{job_id}").json()
    return round(job["progress"] * EPOCHS) if job["phase"] == "training" else 0


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.mark.socket
def test_a_killed_workers_training_resumes_elsewhere_with_one_version(tmp_path: Path) -> None:
    import signal

    from tests.test_jobs_e2e import Installation, _events, wait_for

    inst = Installation(tmp_path / "home")
    try:
        job_id = _long_job(inst, tmp_path, "press")
        first = inst.worker("first")
        wait_for(lambda: _epochs_done(inst, job_id) >= 3, 120, "three epochs")
        children = _children(first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert children, "the worker had no child running the job"
        for child in children:  # the orphaned run would go on (it has its own session)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
        inst.worker("second")
        job = wait_for(
            lambda: (
                (j := inst.http.get(f"/api/v1/jobs/{job_id}").json())["status"]
                in ("succeeded", "failed")
                and j
            ),
            300,
            "the job to end",
        )
        assert (job["status"], job["attempts"]) == ("succeeded", 2), job["error"]
        logs = [e["data"].get("message", "") for e in _events(inst, job_id)]
        assert any(m.startswith("resuming after epoch") for m in logs)
        versions = inst.http.get("/api/v1/models/press/versions").json()
        assert [v["version"] for v in versions] == [1]
        assert versions[0]["lineage"]["job_id"] == job_id
    finally:
        inst.close()


@pytest.mark.socket
def test_a_cancelled_training_stops_within_seconds_and_registers_nothing(tmp_path: Path) -> None:
    from tests.test_jobs_e2e import Installation, wait_for

    inst = Installation(tmp_path / "home")
    try:
        job_id = _long_job(inst, tmp_path, "press")
        inst.worker("only")
        wait_for(lambda: _epochs_done(inst, job_id) >= 1, 120, "an epoch")
        asked = time.monotonic()
        assert inst.http.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
        wait_for(
            lambda: inst.http.get(f"/api/v1/jobs/{job_id}").json()["status"] == "cancelled",
            30,
            "the cancel",
        )
        assert time.monotonic() - asked < 10
        assert inst.http.get("/api/v1/models/press").status_code == 404
    finally:
        inst.close()


# sequences ----------------------------------------------------------------------------------
def wear_series(machines: int = 12, steps: int = 120) -> pd.DataFrame:
    """Machines wearing out: vibration and temperature creep up with wear; a machine fails
    in its last 30 steps (`label`) and has `rul` steps of useful life left."""
    rng = np.random.default_rng(1)
    rows = []
    for m in range(machines):
        wear = 0.0
        for t in range(steps):
            wear += rng.uniform(0, 1)
            rows.append(
                {
                    "machine": f"m{m}",
                    "t": t,
                    "vibration": 0.02 * wear + rng.normal(0, 0.3),
                    "temperature": 50 + 0.1 * wear + rng.normal(0, 1),
                    "rul": steps - t,
                    "label": "fail" if t >= steps - 30 else "ok",
                }
            )
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # the recipe orders them


SEQ = {
    "window": 10,
    "stride": 2,
    "hidden_size": 16,
    "epochs": 8,
    "validation_fraction": 0.2,
    "test_fraction": 0.2,
}


def run_sequence(
    tmp: Path, recipe: str, target: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    data = tmp / "series.csv"
    other = "rul" if target == "label" else "label"  # the other target would leak the answer
    wear_series().drop(columns=other).to_csv(data, index=False)
    chosen = {k: v for k, v in PARAMS.items() if k not in ("hidden", "max_categories")}
    params = check_params(RECIPES[recipe], {**chosen, **SEQ})  # as the server fills them
    spec = {
        "recipe": recipe,
        "data": str(data),
        "format": "csv",
        "target": target,
        "group": "machine",
        "time": "t",
        "checkpoint_dir": str(tmp / f"ck-{recipe}"),
        "params": params,
    }
    (tmp / f"{recipe}.json").write_text(json.dumps(spec))
    out = tmp / f"out-{recipe}"
    argv = [sys.executable, "-m", "modelworks.recipes.train", str(tmp / f"{recipe}.json"), str(out)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300), out


def test_sequence_classification_splits_by_machine(tmp_path: Path) -> None:
    import onnxruntime as ort

    proc, out = run_sequence(tmp_path, "sequence-classification", "label")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = report(out)
    assert r["metrics"]["accuracy"] >= 0.85 and r["labels"] == ["fail", "ok"]
    assert r["machines"] == {"train": 8, "validation": 2, "test": 2}
    assert r["features"] == ["vibration", "temperature"] and r["onnx_max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (window,) = session.get_inputs()
    assert window.name == "window" and window.shape[2] == 2
    worn = np.array([[[3.0, 62.0]] * 25, [[0.0, 50.0]] * 25], dtype=np.float32)  # 25 steps
    worn[1, 3, 0] = np.nan  # a dropped reading
    label, _ = session.run(["label", "probabilities"], {"window": worn})
    assert list(label) == ["fail", "ok"]


def test_sequence_regression_predicts_remaining_life(tmp_path: Path) -> None:
    proc, out = run_sequence(tmp_path, "sequence-regression", "rul")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert report(out)["metrics"]["r2"] > 0.8


def test_a_sequence_job_needs_a_time_series(http: httpx.Client, services: Services) -> None:
    csv = wear_series(machines=6, steps=40).to_csv(index=False).encode()
    r = http.post("/api/v1/datasets", files={"file": ("s.csv", csv)}, data={"name": "flat"})
    assert r.status_code == 201
    r = submit(http, recipe="sequence-classification", dataset="flat", model="m")
    assert r.status_code == 422 and "--entity COLUMN --time COLUMN" in r.text
    r = http.post(
        "/api/v1/datasets",
        files={"file": ("s.csv", csv)},
        data={"name": "series", "entity": "machine", "time": "t"},
    )
    assert r.status_code == 201 and r.json()["profile"]["entities"] == 6
    r = submit(
        http,
        recipe="sequence-classification",
        dataset="series",
        model="press-rul",
        params={"window": 8, "epochs": 2, "cell": "lstm"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["params"]["group"] == "machine" and r.json()["params"]["time"] == "t"
    r = submit(
        http,
        recipe="sequence-classification",
        dataset="series",
        model="m2",
        params={"cell": "transformer"},
    )
    assert r.status_code == 422 and "gru, lstm" in r.text


# images -------------------------------------------------------------------------------------
def part_images(path: Path, per_class: int = 40) -> Path:
    """A zip of 24x24 pictures of parts: `ok` ones are plain, `scratched` ones carry a bright
    diagonal line; both on noisy grey backgrounds of varying brightness."""
    import io
    import zipfile

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(2)
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("ok", "scratched"):
            for i in range(per_class):
                base = rng.integers(60, 140)
                pixels = (base + rng.normal(0, 12, (24, 24, 3))).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(pixels, "RGB")
                if cls == "scratched":
                    a, b = rng.integers(0, 8, 2)
                    ImageDraw.Draw(img).line((a, b, 23 - b, 23 - a), fill=(250, 250, 250), width=2)
                buf = io.BytesIO()
                img.save(buf, "PNG")
                zf.writestr(f"{cls}/{i:03d}.png", buf.getvalue())
    return path


def test_image_classification(tmp_path: Path) -> None:
    import onnxruntime as ort

    data = part_images(tmp_path / "parts.zip")
    params = check_params(
        RECIPES["image-classification"],
        {
            "epochs": 12,
            "image_size": 24,
            "width": 8,
            "learning_rate": 0.01,
            "patience": 50,
            "batch_size": 16,
            "dropout": 0.0,
        },
    )
    spec = {
        "recipe": "image-classification",
        "data": str(data),
        "format": "images",
        "target": "label",
        "group": None,
        "checkpoint_dir": str(tmp_path / "ck"),
        "params": params,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    argv = [sys.executable, "-m", "modelworks.recipes.train", str(tmp_path / "spec.json"), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = report(out)
    assert r["metrics"]["accuracy"] >= 0.85 and r["labels"] == ["ok", "scratched"]
    assert r["image_size"] == 24 and r["onnx_max_abs_diff"] <= 1e-4
    assert not any((tmp_path / "work").glob("images-*"))  # the unpacked images are gone
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "image"
    plain = np.full((1, 3, 24, 24), 100 / 255, dtype=np.float32)
    assert list(session.run(["label"], {"image": plain})[0]) == ["ok"]


def test_two_launcher_agents_join_one_run_over_a_c10d_rendezvous(tmp_path: Path) -> None:
    """Several machines, simulated on loopback: two elastic agents, one rank each, meet at a
    c10d rendezvous endpoint and train as one data-parallel run (rank 0 writes the output)."""
    df = sensor_frame()
    data = tmp_path / "data.csv"
    df.to_csv(data, index=False)
    spec = {
        "recipe": "tabular-classification",
        "data": str(data),
        "format": "csv",
        "target": "label",
        "group": None,
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "params": PARAMS,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    port = free_port()
    agents = []
    for node in (0, 1):
        argv = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--nproc-per-node", "1", "--node-rank", str(node), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job-7",
            "-m", "modelworks.recipes.train", str(tmp_path / "spec.json"),
            str(tmp_path / f"out-{node}"),
        ]  # fmt: skip
        agents.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = [a.communicate(timeout=300) for a in agents]
    assert [a.returncode for a in agents] == [0, 0], results[0][1][-2000:]
    written = [p.name for p in tmp_path.glob("out-*") if (p / "report.json").exists()]
    assert len(written) == 1  # only rank 0 writes
    assert report(tmp_path / written[0])["world_size"] == 2
