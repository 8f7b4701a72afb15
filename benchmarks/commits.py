"""Serving throughput of this checkout against another commit's, side by side in one run.

    .venv/bin/python benchmarks/commits.py --against 3909328 [--concurrency 32]
        [--duration 8] [--rounds 3]

Checks the other commit out into a temporary git worktree and starts `modelworks serve --demo`
from each checkout (each on a fresh MODELWORKS_HOME; the old one with its folder first on
PYTHONPATH, checked by the path the server's package loads from), registers the same
`tabular` MLP in both (benchmarks/serving.py's), then measures tabular (OIP v2 infer) and
embed (OpenAI /v1/embeddings on the demo's MiniLM) at each concurrency, interleaved round by
round with the order alternating, so drift on a shared machine hits both sides. Prints the
median rps of each, new/old, and PASS when new/old >= 0.95 at the top concurrency.
About (2 models x 2 sides x rounds x (duration + warm-up)) plus two server starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import (
    EMBED,
    REPO,
    TABULAR,
    LoadGen,
    Run,
    bodies,
    build_tabular_onnx,
    measure,
    start_modelworks,
)


def describe(rev: str | None) -> str:
    """`git describe` of a commit, or of this working tree (None; `-dirty` when changed)."""
    cmd = ["git", "describe", "--always"] + (["--dirty"] if rev is None else [rev])
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def loaded_from(pid: int) -> str:
    """Where the server process imported modelworks from (its maps name the package's .py
    files only once they are open; its cwd and PYTHONPATH decide): read /proc/PID/environ."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    path = next((e[11:].decode() for e in env if e.startswith(b"PYTHONPATH=")), "")
    cwd = str(Path(f"/proc/{pid}/cwd").resolve())
    return path or cwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the other commit (e.g. HEAD~3)")
    parser.add_argument("--concurrency", default="32")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--models", default=f"{TABULAR},{EMBED}", help="which to measure")
    parser.add_argument(
        "--start-first", choices=("new", "old"), default="new", help="which server starts first"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    models = [m for m in (TABULAR, EMBED) if m in args.models.split(",")]
    tool = args.loadgen if args.loadgen != "auto" else ("wrk" if shutil.which("wrk") else "python")
    runs: list[tuple[str, Run]] = []
    with tempfile.TemporaryDirectory(prefix="mw-commits-") as tmp_name:
        tmp = Path(tmp_name)
        old_tree = tmp / "old"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old_tree), args.against],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        servers = []
        try:
            gen = LoadGen(tool, tmp)
            paths = bodies(tmp)
            tab = build_tabular_onnx(tmp / "tabular.onnx")
            sides = {}
            starts = [("new", REPO), ("old", old_tree)]
            for side, source in starts if args.start_first == "new" else starts[::-1]:
                home = tmp / f"home-{side}"
                proc, url, key = start_modelworks(home, tmp, None, source=source)
                servers.append(proc)
                auth = {"Authorization": f"Bearer {key}"}
                r = httpx.post(
                    f"{url}/api/v1/models",
                    json={"name": TABULAR, "task": "tabular-classification"},
                    headers=auth,
                    timeout=30,
                )
                r.raise_for_status()
                with tab.open("rb") as f:
                    httpx.post(
                        f"{url}/api/v1/models/{TABULAR}/versions",
                        files={"file": f},
                        headers=auth,
                        timeout=60,
                    ).raise_for_status()
                httpx.get(
                    f"{url}/v2/models/{TABULAR}/ready", headers=auth, timeout=120
                ).raise_for_status()
                sides[side] = (proc, url, auth)
                print(
                    f"{side}: {describe(args.against if side == 'old' else None)} "
                    f"imports modelworks from {loaded_from(proc.pid)}",
                    flush=True,
                )
            if loaded_from(sides["new"][0].pid) == loaded_from(sides["old"][0].pid):
                raise SystemExit("both servers import the same modelworks: nothing to compare")
            for rnd in range(args.rounds):
                order = ("old", "new") if rnd % 2 == 0 else ("new", "old")
                for c in levels:
                    for model in models:
                        path, body = paths[model]
                        for side in order:
                            proc, url, auth = sides[side]
                            run = measure(
                                gen,
                                side,
                                model,
                                url + path,
                                body,
                                auth,
                                c,
                                args,
                                proc.pid,
                                label=f"round {rnd + 1}",
                            )
                            runs.append((side, run))
        finally:
            for proc in servers:
                proc.stop()
            with contextlib.suppress(subprocess.CalledProcessError):
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(old_tree)],
                    cwd=REPO,
                    check=True,
                    capture_output=True,
                )
    bad = sum(r.errors for _, r in runs)
    print(
        f"\nserving throughput, {args.rounds} rounds of {args.duration:g} s ({tool}); "
        f"new = this checkout, old = {args.against}"
    )
    print(
        f"{'model':<8} {'c':>3} {'old rps':>9} {'new rps':>9} {'new/old':>8} "
        f"{'old p99':>8} {'new p99':>8}"
    )
    verdicts = []
    for c in levels:
        for model in models:
            got = {
                s: [r for side, r in runs if side == s and r.model == model and r.concurrency == c]
                for s in ("old", "new")
            }
            old = statistics.median(r.rps for r in got["old"])
            new = statistics.median(r.rps for r in got["new"])
            p99o = statistics.median(r.p99_ms for r in got["old"])
            p99n = statistics.median(r.p99_ms for r in got["new"])
            print(
                f"{model:<8} {c:>3} {old:>9.1f} {new:>9.1f} {new / old:>8.3f} "
                f"{p99o:>7.2f}ms {p99n:>7.2f}ms"
            )
            if c == max(levels):
                verdicts.append((model, new / old))
    for model, ratio in verdicts:
        print(
            f"{model} at c={max(levels)}: new/old {ratio:.3f} "
            f"{'PASS within 5%' if ratio >= 0.95 else 'MISS'}"
        )
    if bad:
        print(f"INVALID: {bad} requests failed; the comparison does not hold")
    if args.json:
        args.json.write_text(json.dumps([{"side": s, **r.__dict__} for s, r in runs], indent=1))


if __name__ == "__main__":
    main()
