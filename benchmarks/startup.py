"""Server start time to ready and idle memory, for a first start and a warm restart.

    .venv/bin/python benchmarks/startup.py

Starts `modelworks serve --demo` on a fresh home (the first start exports MiniLM to ONNX),
polls /readyz, calls the pump model and MiniLM once each (times from process start), then
reads the server's proportional set size (PSS, with both models loaded) from /proc.
Medians of --runs starts; the warm restart is the same home started again.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

EMBED = {"model": "minilm", "input": "Hydraulic press 4 leaks oil near the main cylinder seal."}
BODY = {
    "inputs": [
        {"name": "sensors", "shape": [1, 4], "datatype": "FP32", "data": [[0.9, 0.8, 0.2, 0.7]]}
    ]
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(home: Path, key: str | None) -> tuple[float, float, float, float, str]:
    port = free_port()
    env = {**os.environ, "MODELWORKS_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelworks", "serve", "--demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.02)
        ready = time.perf_counter() - t0
        if key is None:
            assert proc.stdout is not None
            key = proc.stdout.readline().strip()
        r = httpx.post(
            f"{url}/v2/models/pump-failure/infer",
            json=BODY,
            headers={"Authorization": f"Bearer {key}"},
        )
        r.raise_for_status()
        first = time.perf_counter() - t0
        r = httpx.post(
            f"{url}/v1/embeddings",
            json=EMBED,
            timeout=60,
            headers={"Authorization": f"Bearer {key}"},
        )
        r.raise_for_status()
        embed = time.perf_counter() - t0
        time.sleep(1.0)
        return ready, first, embed, pss_mb(proc.pid), key
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cold, warm = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            r, f, e, m, key = start(home, None)
            cold.append((r, f, e, m))
            r, f, e, m, _ = start(home, key)
            warm.append((r, f, e, m))
    print(
        f"{'start':<14}{'ready (s)':>12}{'first infer (s)':>18}{'first embed (s)':>18}"
        f"{'PSS (MB)':>12}"
    )
    for label, rows in (("first start", cold), ("warm restart", warm)):
        ready, first, embed, pss = (statistics.median(x[k] for x in rows) for k in range(4))
        print(f"{label:<14}{ready:>12.2f}{first:>18.2f}{embed:>18.2f}{pss:>12.0f}")


if __name__ == "__main__":
    main()
