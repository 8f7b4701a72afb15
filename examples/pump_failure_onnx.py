"""Write a pump-failure ONNX model (4 sensor readings -> failure probability) for the README tour.

    python examples/pump_failure_onnx.py pump-v2.onnx

The weights stand in for a retrained model: same signature as the demo, more weight on vibration.
"""

from __future__ import annotations

import sys
from pathlib import Path

from modelworks.demo import build_demo_onnx

RETRAINED_WEIGHTS = (2.0, 4.0, -1.0, 1.0)
RETRAINED_BIAS = -3.2

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "pump-v2.onnx")
    build_demo_onnx(out, weights=RETRAINED_WEIGHTS, bias=RETRAINED_BIAS)
    print(f"wrote {out}")
