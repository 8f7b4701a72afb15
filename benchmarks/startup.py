"""Server start time to ready and idle memory, for a first start and a warm restart.

    .venv/bin/python benchmarks/startup.py

Starts `modelworks serve --demo` on a fresh home, polls /readyz, calls the demo model once,
then reads the process's proportional set size (PSS) from /proc. Medians of --runs starts.
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


def start(home: Path, key: str | None) -> tuple[float, float, float, str]:
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
        time.sleep(1.0)
        return ready, first, pss_mb(proc.pid), key
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
            r, f, m, key = start(home, None)
            cold.append((r, f, m))
            r, f, m, _ = start(home, key)
            warm.append((r, f, m))
    print(f"{'start':<14}{'ready (s)':>12}{'first infer (s)':>18}{'PSS idle (MB)':>16}")
    for label, rows in (("first start", cold), ("warm restart", warm)):
        ready, first, pss = (statistics.median(x[k] for x in rows) for k in range(3))
        print(f"{label:<14}{ready:>12.2f}{first:>18.2f}{pss:>16.0f}")


if __name__ == "__main__":
    main()
