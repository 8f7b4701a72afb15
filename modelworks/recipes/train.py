"""The child process of a training job:

    python -m modelworks.recipes.train SPEC.json OUT_DIR
    python -m torch.distributed.run --standalone --nproc-per-node N \\
        -m modelworks.recipes.train SPEC.json OUT_DIR          # N data-parallel ranks (DDP)

SPEC.json (written by `modelworks.jobs.train`): recipe, data (the dataset file), format,
target, params (checked), group (a column the split keeps together), checkpoint_dir. Rank 0
reports progress (`modelworks.jobs.report`), checkpoints every epoch, and writes OUT_DIR:
model.onnx, model.safetensors, config.json, report.json.

Exit status: 0 done; 3 the loss diverged; 4 the data cannot train this recipe; 1 anything
else. The last stderr line starting `training failed:` says why.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from modelworks.recipes.common import BAD_DATA, Ranks, TrainingFailed


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m modelworks.recipes.train SPEC.json OUT_DIR", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    out = Path(argv[2])
    ranks = Ranks()
    try:
        if spec["recipe"] in ("tabular-classification", "tabular-regression"):
            from modelworks.recipes.tabular import train

            train(spec, out, ranks)
        elif spec["recipe"] == "image-classification":
            from modelworks.recipes.image import train as train_images

            train_images(spec, out, ranks)
        elif spec["recipe"] in ("sequence-classification", "sequence-regression"):
            from modelworks.recipes.sequence import train as train_sequence

            train_sequence(spec, out, ranks)
        else:
            raise TrainingFailed(f"unknown recipe {spec['recipe']!r}", BAD_DATA)
        return 0
    except TrainingFailed as exc:
        print(f"training failed: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except Exception as exc:
        traceback.print_exc()
        print(f"training failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        ranks.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
