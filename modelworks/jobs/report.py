"""How a job's child process talks to its worker: progress events as marked JSON lines on
standard output; any other line, on stdout or stderr, is a log line of the job.

    from modelworks.jobs.report import emit
    emit(phase="training", progress=0.4, step=120, metrics={"loss": 0.31}, message="epoch 2/5")
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

MARK = "@modelworks-event "
FIELDS = ("phase", "progress", "step", "metrics", "message", "eta_s")
MAX_EVENT_BYTES = 16_384


def emit(**data: Any) -> None:
    """Report progress (fields: phase, progress 0-1, step, metrics, message, eta_s)."""
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown event fields {sorted(unknown)}; use {', '.join(FIELDS)}")
    sys.stdout.write(MARK + json.dumps(data, default=float, allow_nan=False) + "\n")
    sys.stdout.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The event a line carries, cleaned; None for a log line. A malformed event is a log line."""
    if not line.startswith(MARK) or len(line) > MAX_EVENT_BYTES:
        return None
    try:
        raw = json.loads(line[len(MARK) :])
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    event: dict[str, Any] = {}
    if isinstance(raw.get("phase"), str):
        event["phase"] = raw["phase"][:64]
    progress = raw.get("progress")
    if isinstance(progress, int | float) and math.isfinite(progress):
        event["progress"] = min(1.0, max(0.0, float(progress)))
    if isinstance(raw.get("step"), int):
        event["step"] = raw["step"]
    if isinstance(raw.get("eta_s"), int | float) and math.isfinite(raw["eta_s"]):
        event["eta_s"] = float(raw["eta_s"])
    metrics = raw.get("metrics")
    if isinstance(metrics, dict):
        event["metrics"] = {
            str(k)[:64]: v
            for k, v in list(metrics.items())[:64]
            if isinstance(v, int | float) and math.isfinite(v)
        }
    if isinstance(raw.get("message"), str):
        event["message"] = raw["message"][:1000]
    return event or None
