"""Training throughput: the tabular MLP recipe at 1 rank and at 2 DDP ranks, side by side.

    .venv/bin/python benchmarks/training.py [--rows 20000] [--epochs 3] [--rounds 2]

Runs `python -m modelworks.recipes.train` (the child process of a training job) on a seeded
press-sensor CSV (examples/press_sensors_csv.py), once as one process and once under torch's
elastic launcher with 2 ranks (gloo, cores split between the ranks), alternating, and prints
training rows/s (rows of the training split x epochs / seconds in the epoch loop, as the run's
report records them), the speed-up and the scaling efficiency (speed-up / ranks), with the
test accuracy of each to show they learn the same. A few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))


def run(
    folder: Path, data: Path, ranks: int, epochs: int, tag: str, batch: int
) -> dict[str, float]:
    spec = {
        "recipe": "tabular-classification",
        "data": str(data),
        "format": "csv",
        "target": "label",
        "group": None,
        "checkpoint_dir": str(folder / f"ck-{tag}"),
        "params": {
            "epochs": epochs,
            "batch_size": batch,
            "learning_rate": 1e-3,
            "hidden": [128, 128],
            "dropout": 0.1,
            "weight_decay": 0.0,
            "patience": 100,
            "seed": 0,
            "validation_fraction": 0.1,
            "test_fraction": 0.1,
            "max_categories": 100,
        },
    }
    spec_path = folder / f"spec-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    out = folder / f"out-{tag}"
    entry = ["-m", "modelworks.recipes.train", str(spec_path), str(out)]
    if ranks > 1:
        entry = [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(ranks),
            *entry,
        ]
    subprocess.run([sys.executable, *entry], check=True, capture_output=True, cwd=ROOT)
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]["train"] * report["epochs_this_attempt"]
    return {"rows_per_s": rows / report["train_seconds"], "accuracy": report["metrics"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    args = parser.parse_args()
    from press_sensors_csv import main as write_csv

    with tempfile.TemporaryDirectory(prefix="mw-train-bench-") as tmp:
        folder = Path(tmp)
        data = folder / "press.csv"
        write_csv(str(data), args.rows)
        results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for r in range(args.rounds):
            for ranks in (1, 2) if r % 2 == 0 else (2, 1):
                got = run(folder, data, ranks, args.epochs, f"{ranks}-{r}", args.batch_size)
                results[ranks].append(got)
                print(f"round {r + 1}: {ranks} rank(s) {got['rows_per_s']:9.0f} rows/s", flush=True)
    one = statistics.median(x["rows_per_s"] for x in results[1])
    two = statistics.median(x["rows_per_s"] for x in results[2])
    print(
        f"\ntabular MLP training, {args.rows} rows, {args.epochs} epochs, median of {args.rounds}"
    )
    print(f"{'ranks':>5} {'rows/s':>10} {'accuracy':>9}")
    for ranks, speed in ((1, one), (2, two)):
        acc = results[ranks][0]["accuracy"]
        print(f"{ranks:>5} {speed:>10.0f} {acc:>9.3f}")
    print(f"speed-up at 2 ranks: {two / one:.2f}x; scaling efficiency {two / one / 2:.0%}")


if __name__ == "__main__":
    main()
