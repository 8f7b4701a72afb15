"""Train a bearing-fault random forest with scikit-learn and save it with joblib, as a team
that trained outside Modelworks would hand it over (`pip install 'modelworks[convert]'`).

    python examples/bearing_rf.py bearing_rf.joblib

Five vibration features per reading (RMS, peak, crest factor, kurtosis, temperature rise),
synthetic and seeded; classes `healthy`, `outer-race`, `inner-race`. Convert it to ONNX on your
machine (`modelworks convert bearing_rf.joblib bearing_rf.onnx --features 5`): the server never
loads a pickle.
"""

from __future__ import annotations

import sys
from pathlib import Path

CLASSES = ("healthy", "outer-race", "inner-race")


def train(out: Path, seed: int = 7) -> Path:
    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    centres = np.array(
        [[0.5, 1.5, 3.0, 3.0, 2.0], [1.2, 4.0, 3.5, 6.0, 6.0], [1.0, 5.0, 5.0, 9.0, 4.0]]
    )
    y = rng.integers(0, len(CLASSES), 600)
    x = centres[y] + rng.normal(0, 0.4, (len(y), 5))
    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=seed)
    model.fit(x.astype(np.float32), np.array(CLASSES)[y])
    joblib.dump(model, out)
    return out


if __name__ == "__main__":
    path = train(Path(sys.argv[1] if len(sys.argv) > 1 else "bearing_rf.joblib"))
    print(f"wrote {path}")
