"""Serving throughput and latency: Modelworks vs the raw runtime vs a plain FastAPI app.

    .venv/bin/python benchmarks/serving.py            # full run: c=1, 8, 32, 10 s each (~5 min)
    .venv/bin/python benchmarks/serving.py --quick    # smoke test: c=8 only, 2 s runs

Starts `python -m modelworks serve --demo` on a fresh MODELWORKS_HOME (the demo registers
`minilm`, all-MiniLM-L6-v2 exported to ONNX), uploads `tabular` (an MLP 10→64→64→2 built with
onnx.helper from seeded weights) with the SDK, and drives both from a separate load-generator
process (`wrk` when installed: far less CPU per request than benchmarks/loadgen.py, the asyncio
+ httpx fallback; --loadgen picks). Then, side by side in the same run (DESIGN.md §9):

- batching off: PATCH minilm `{"serving": {"max_batch_size": 1}}`, embed at the top
  concurrency again, then restore;
- the plain baseline: benchmarks/baseline_app.py under `uvicorn --workers 2`, the same ONNX
  files, one request at a time per worker;
- the raw limit: the same ONNX Runtime sessions (modelworks' TextModel / OnnxModel) in this
  process, no HTTP, at the mean batch the server formed at the top concurrency and at batch 1.

Prints one table plus the issue's targets marked PASS/MISS, the server's PSS, whether torch is
mapped into it, and where CPU went (load generator vs server) in every run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
LOADGEN = REPO / "benchmarks" / "loadgen.py"
SENTENCE = (
    "Operators reported rising vibration and bearing temperature on the hydraulic press "
    "before the scheduled maintenance window."
)
EMBED, TABULAR = "minilm", "tabular"
TABULAR_IN, TABULAR_OUT, FEATURES = "features", "logits", 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


# models and bodies ------------------------------------------------------------------------
def build_tabular_onnx(path: Path, seed: int = 0) -> Path:
    """MLP 10→64→64→2 (MatMul/Add/Relu x2, MatMul/Add), seeded weights, FP32 [-1, 10] in."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [FEATURES, 64, 64, 2]
    inits, nodes, prev = [], [], TABULAR_IN
    for i, (a, b) in enumerate(pairwise(dims)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (0.01 * rng.standard_normal(b)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        last = i == len(dims) - 2
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]))
        nodes.append(
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [TABULAR_OUT if last else f"z{i}"])
        )
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "tabular_mlp",
        [helper.make_tensor_value_info(TABULAR_IN, TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info(TABULAR_OUT, TensorProto.FLOAT, ["batch", 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def tabular_row() -> list[float]:
    return [round(float(x), 4) for x in np.random.default_rng(1).standard_normal(FEATURES)]


def bodies(folder: Path) -> dict[str, tuple[str, Path]]:
    """model -> (url path, body file)."""
    embed = folder / "embed.json"
    embed.write_text(json.dumps({"model": EMBED, "input": SENTENCE}))
    tab = folder / "tabular.json"
    row = {"name": TABULAR_IN, "shape": [1, FEATURES], "datatype": "FP32", "data": tabular_row()}
    tab.write_text(json.dumps({"inputs": [row]}))
    return {EMBED: ("/v1/embeddings", embed), TABULAR: (f"/v2/models/{TABULAR}/infer", tab)}


# processes --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_pids(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            parents.setdefault(st[0], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def machine_busy_s() -> float:
    """CPU seconds every core spent busy since boot (all processes), from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / CLK_TCK


def tree_cpu_s(pid: int) -> float:
    return sum(st[1] for p in tree_pids(pid) if (st := _stat(p)) is not None)


def pss_mb(pid: int) -> float:
    total = 0.0
    for p in tree_pids(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) / 1024
    return total


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


class Process:
    """A child process with its stderr in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, stdout: Path, cwd: Path = REPO
    ) -> None:
        self.log = log
        self.stdout_path = stdout
        with open(log, "ab") as err, open(stdout, "ab") as out:
            self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=err)
        self.pid = self.proc.pid

    def wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{url} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{url} not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_modelworks(
    home: Path, tmp: Path, key: str | None, source: Path = REPO
) -> tuple[Process, str, str]:
    """`modelworks serve --demo` from the checkout at `source` (this one by default)."""
    port = free_port()
    env = {**os.environ, "MODELWORKS_HOME": str(home), "MODELWORKS_LOG_LEVEL": "warning"}
    if source != REPO:  # `python -m` puts the working folder first on sys.path
        env["PYTHONPATH"] = str(source)
    out = tmp / f"serve-{port}.out"
    proc = Process(
        [sys.executable, "-m", "modelworks", "serve", "--demo", "--port", str(port)],
        env,
        tmp / f"serve-{port}.log",
        out,
        cwd=source,
    )
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/readyz", timeout=600)  # the first start exports minilm (~15 s)
    if key is None:
        key = out.read_text().splitlines()[0].strip()
    auth = {"Authorization": f"Bearer {key}"}
    for model in (EMBED, TABULAR):
        r = httpx.get(f"{url}/api/v1/models/{model}", headers=auth, timeout=30)
        if r.status_code == 200:
            httpx.get(f"{url}/v2/models/{model}/ready", headers=auth, timeout=120)
    return proc, url, key


def start_baseline(app: str, env: dict[str, str], tmp: Path) -> tuple[Process, str]:
    """`uvicorn benchmarks.baseline_app:<app> --workers 2`, once it answers /health."""
    port = free_port()
    proc = Process(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"benchmarks.baseline_app:{app}",
            "--workers",
            "2",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env,
        tmp / f"{app}.log",
        tmp / f"{app}.out",
    )
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/health", timeout=120)
    return proc, url


# load generators --------------------------------------------------------------------------
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %.1f, "
    .. "\\"p99_us\\": %.1f, \\"errors\\": %d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class LoadGen:
    tool: str  # "wrk" | "python"
    tmp: Path

    def run(
        self, url: str, body: Path, headers: dict[str, str], concurrency: int, duration: float
    ) -> dict[str, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        if self.tool == "wrk":
            res = self._wrk(url, body, headers, concurrency, duration)
        else:
            res = self._python(url, body, headers, concurrency, duration)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if "cpu_s" not in res:
            res["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return res

    def _wrk(
        self, url: str, body: Path, headers: dict[str, str], concurrency: int, duration: float
    ) -> dict[str, float]:
        script = self.tmp / "wrk.lua"
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        script.write_text(WRK_SCRIPT.format(body=body.read_text(), headers=lines))
        seconds = max(1, round(duration))
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s"]
        out = subprocess.run(
            [*cmd, "-s", str(script), url], capture_output=True, text=True, check=True
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
        raw = json.loads(line.removeprefix("WRKJSON "))
        secs = raw["duration_us"] / 1e6
        return {
            "requests": raw["requests"],
            "rps": raw["requests"] / secs,
            "p50_ms": raw["p50_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "errors": raw["errors"],
            "duration_s": secs,
        }

    def _python(
        self, url: str, body: Path, headers: dict[str, str], concurrency: int, duration: float
    ) -> dict[str, float]:
        cmd = [sys.executable, str(LOADGEN), "--url", url, "--body-file", str(body)]
        cmd += ["--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "0"]
        for k, v in headers.items():
            cmd += ["--header", f"{k}: {v}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))


# measuring --------------------------------------------------------------------------------
@dataclass
class Run:
    system: str  # served | baseline | floor | batching-off | loadgen-check
    model: str
    concurrency: int
    tool: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    gen_cpu_pct: float  # load generator CPU, % of one core
    srv_cpu_pct: float  # server process tree CPU, % of one core
    other_cpu_pct: float = 0.0  # everything else on the machine (other sessions, noise)
    mean_batch: float = float("nan")
    busy_pct: float = float("nan")  # runtime time inside batches / wall time
    note: str = ""


def server_stats(url: str, headers: dict[str, str]) -> dict[str, float]:
    """Prometheus batch histograms: {'<model>:<v> size_sum|size_count|secs_sum': value}."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    pat = re.compile(
        r'^modelworks_batch_(size|duration_seconds)_(sum|count)\{model="([^"]+)"\} (\S+)$'
    )
    out: dict[str, float] = {}
    for line in text.splitlines():
        if m := pat.match(line):
            kind = "size" if m[1] == "size" else "secs"
            out[f"{m[3]} {kind}_{m[2]}"] = float(m[4])
    return out


def measure(
    gen: LoadGen,
    system: str,
    model: str,
    url: str,
    body: Path,
    headers: dict[str, str],
    concurrency: int,
    args: argparse.Namespace,
    server_pid: int,
    stats: Callable[[], dict[str, float]] | None = None,
    label: str = "",
) -> Run:
    if args.warmup > 0:
        gen.run(url, body, headers, concurrency, args.warmup)
    s0 = stats() if stats else {}
    c0, m0 = tree_cpu_s(server_pid), machine_busy_s()
    res = gen.run(url, body, headers, concurrency, args.duration)
    c1, m1 = tree_cpu_s(server_pid), machine_busy_s()
    s1 = stats() if stats else {}
    secs = float(res["duration_s"])
    run = Run(
        system,
        model,
        concurrency,
        gen.tool,
        float(res["rps"]),
        float(res["p50_ms"]),
        float(res["p99_ms"]),
        int(res["requests"]),
        int(res["errors"]),
        100 * float(res["cpu_s"]) / secs,
        100 * (c1 - c0) / secs,
        note=label,
    )
    run.other_cpu_pct = max(0.0, 100 * (m1 - m0) / secs - run.gen_cpu_pct - run.srv_cpu_pct)
    if stats:
        key = f"{model}:1"
        count = s1.get(f"{key} size_count", 0) - s0.get(f"{key} size_count", 0)
        if count > 0:
            run.mean_batch = (s1[f"{key} size_sum"] - s0.get(f"{key} size_sum", 0)) / count
            run.busy_pct = 100 * (s1[f"{key} secs_sum"] - s0.get(f"{key} secs_sum", 0)) / secs
    print(f"  {describe(run)}", flush=True)
    return run


def describe(r: Run) -> str:
    batch = f" batch {r.mean_batch:.1f}" if r.mean_batch == r.mean_batch else ""
    return (
        f"{r.system:<13} {r.model:<8} c={r.concurrency:<3} {r.rps:8.1f} rps  p50 {r.p50_ms:7.2f}"
        f" ms  p99 {r.p99_ms:7.2f} ms  err {r.errors}{batch}  [{r.tool}: gen {r.gen_cpu_pct:.0f}%"
        f" cpu, server {r.srv_cpu_pct:.0f}%, other {r.other_cpu_pct:.0f}%] {r.note}"
    )


@dataclass
class Raw:
    model: str
    batch: int
    rows_per_s: float
    p50_ms: float  # per call (a whole batch)
    calls: int
    cpu_pct: float = 0.0  # this process, % of one core
    other_cpu_pct: float = 0.0  # everything else on the machine


def raw_bench(model: str, predict: Callable[[], Any], batch: int, seconds: float) -> Raw:
    for _ in range(3):
        predict()
    lat: list[float] = []
    m0, p0 = machine_busy_s(), time.process_time()
    start = time.perf_counter()
    t1 = start
    while t1 - start < seconds or len(lat) < 5:
        t0 = time.perf_counter()
        predict()
        t1 = time.perf_counter()
        lat.append(t1 - t0)
    wall = t1 - start
    own = 100 * (time.process_time() - p0) / wall
    other = max(0.0, 100 * (machine_busy_s() - m0) / wall - own)
    raw = Raw(
        model, batch, batch * len(lat) / wall, statistics.median(lat) * 1000, len(lat), own, other
    )
    print(
        f"  raw           {model:<8} batch {batch:<3} {raw.rows_per_s:8.1f} rows/s  "
        f"p50 {raw.p50_ms:7.2f} ms per call  [cpu {own:.0f}%, other {other:.0f}%]",
        flush=True,
    )
    return raw


# the run ----------------------------------------------------------------------------------
@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    raw: list[Raw] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def find(self, system: str, model: str, c: int) -> Run | None:
        return next(
            (r for r in self.runs if (r.system, r.model, r.concurrency) == (system, model, c)),
            None,
        )


def patch_serving(url: str, headers: dict[str, str], serving: dict[str, Any]) -> None:
    r = httpx.patch(
        f"{url}/api/v1/models/{EMBED}", json={"serving": serving}, headers=headers, timeout=30
    )
    r.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated connections")
    parser.add_argument("--raw-seconds", type=float, default=5.0, help="seconds per raw batch")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke test: c=8, 2 s runs")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.raw_seconds, args.concurrency = 2.0, 1.0, 1.0, "8"
    levels = sorted({int(c) for c in args.concurrency.split(",")})
    tool = args.loadgen
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    other = "python" if tool == "wrk" else ("wrk" if shutil.which("wrk") else None)
    top, low = levels[-1], levels[0]
    res = Results()
    res.facts.update(
        loadgen=tool, duration_s=args.duration, warmup_s=args.warmup, cores=os.cpu_count()
    )
    print(f"load generator: {tool}; {args.duration:g} s runs after {args.warmup:g} s warm-up")

    with tempfile.TemporaryDirectory(prefix="mw-serving-bench-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        gen = LoadGen(tool, tmp)
        tab_onnx = build_tabular_onnx(tmp / "tabular.onnx")
        paths = bodies(tmp)

        # 1. the served system -----------------------------------------------------------
        print("starting modelworks serve --demo (first start exports minilm to ONNX)…")
        t0 = time.perf_counter()
        server, url, key = start_modelworks(home, tmp, None)
        res.facts["server_start_s"] = time.perf_counter() - t0
        auth = {"Authorization": f"Bearer {key}"}
        from modelworks import Client

        with Client(url, key) as client:
            client.create_model(TABULAR, task="tabular-classification")
            client.push(TABULAR, tab_onnx)
            ver = client.get_version(EMBED, 1)
            tab_sig = client.get_version(TABULAR, 1)["signature"]
            original_serving = client.get_model(EMBED).get("serving") or {}
        httpx.get(f"{url}/v2/models/{TABULAR}/ready", headers=auth, timeout=60).raise_for_status()
        served_out = {
            m: httpx.post(url + p, content=b.read_bytes(), headers=auth, timeout=60).json()
            for m, (p, b) in paths.items()
        }

        def stats() -> dict[str, float]:
            return server_stats(url, auth)

        print("served:")
        for model in (EMBED, TABULAR):
            path, body = paths[model]
            for c in levels:
                res.runs.append(
                    measure(
                        gen, "served", model, url + path, body, auth, c, args, server.pid, stats
                    )
                )
        res.facts["server_pss_mb"] = pss_mb(server.pid)
        res.facts["server_torch_mapped"] = maps_torch(server.pid)

        if other is not None and not args.quick:
            print(f"load generator check ({other} instead of {tool}):")
            path, body = paths[TABULAR]
            check = LoadGen(other, tmp)
            run = measure(
                check,
                "loadgen-check",
                TABULAR,
                url + path,
                body,
                auth,
                top,
                args,
                server.pid,
                stats,
            )
            res.runs.append(run)

        print(f"batching off (PATCH {EMBED} serving max_batch_size=1):")
        path, body = paths[EMBED]
        patch_serving(url, auth, {**original_serving, "max_batch_size": 1})
        try:
            run = measure(
                gen,
                "batching-off",
                EMBED,
                url + path,
                body,
                auth,
                top,
                args,
                server.pid,
                stats,
                label="live PATCH",
            )
            res.runs.append(run)
            if run.mean_batch > 1.05:
                res.facts["patch_applied_live"] = False
                run.system = "patch-live"
                print("  the PATCH did not reach the loaded model's batcher; restarting the server")
                server.stop()
                server, url, _ = start_modelworks(home, tmp, key)
                res.runs.append(
                    measure(
                        gen,
                        "batching-off",
                        EMBED,
                        url + path,
                        body,
                        auth,
                        top,
                        args,
                        server.pid,
                        stats,
                        label="after restart",
                    )
                )
            else:
                res.facts["patch_applied_live"] = True
        finally:
            patch_serving(url, auth, original_serving)
            server.stop()

        # 2. the plain baseline ----------------------------------------------------------
        store = home / "artifacts"
        onnx_hex = ver["artifacts"]["onnx"]["digest"].split(":", 1)[1]
        embed_onnx = store / "blobs" / "sha256" / onnx_hex[:2] / onnx_hex[2:]
        folder = store / "unpacked" / ver["digest"].split(":", 1)[1]
        if ver["signature"].get("root"):
            folder = folder / ver["signature"]["root"]
        env = {
            **os.environ,
            "BASELINE_TABULAR_ONNX": str(tab_onnx),
            "BASELINE_EMBED_ONNX": str(embed_onnx),
            "BASELINE_EMBED_FOLDER": str(folder),
        }
        print("starting the baseline (uvicorn benchmarks.baseline_app:app --workers 2)…")
        base, burl = start_baseline("app", env, tmp)
        try:
            time.sleep(3)  # let the second worker finish loading
            base_out = {
                m: httpx.post(burl + p, content=b.read_bytes(), headers=auth, timeout=60).json()
                for m, (p, b) in paths.items()
            }
            res.facts["embed_max_abs_diff"] = float(
                np.abs(
                    np.array(served_out[EMBED]["data"][0]["embedding"])
                    - np.array(base_out[EMBED]["data"][0]["embedding"])
                ).max()
            )
            res.facts["tabular_max_abs_diff"] = float(
                np.abs(
                    np.ravel(served_out[TABULAR]["outputs"][0]["data"])
                    - np.ravel(base_out[TABULAR]["outputs"][0]["data"])
                ).max()
            )
            print("baseline:")
            for model in (EMBED, TABULAR):
                path, body = paths[model]
                for c in levels:
                    res.runs.append(
                        measure(gen, "baseline", model, burl + path, body, auth, c, args, base.pid)
                    )
            res.facts["baseline_pss_mb"] = pss_mb(base.pid)
        finally:
            base.stop()

        # the Python floor: the tabular route as a bare ASGI callable, same workers
        print("starting the floor (uvicorn benchmarks.baseline_app:floor --workers 2)…")
        floor, furl = start_baseline("floor", env, tmp)
        try:
            time.sleep(3)
            path, body = paths[TABULAR]
            res.runs.append(
                measure(gen, "floor", TABULAR, furl + path, body, auth, top, args, floor.pid)
            )
        finally:
            floor.stop()

        # 3. the raw limit: the same runtimes in this process, no HTTP --------------------
        from modelworks.runtimes.onnx import OnnxModel
        from modelworks.runtimes.text import TextModel

        print("raw limit (same ONNX Runtime sessions, no HTTP):")
        text_model = TextModel(folder, embed_onnx, "embeddings", ver["signature"])
        tab_model = OnnxModel(tab_onnx, tab_sig)
        row = np.array([tabular_row()], dtype=np.float32)
        for model in (EMBED, TABULAR):
            served_top = res.find("served", model, top)
            mean = served_top.mean_batch if served_top else float("nan")
            sizes = sorted({1, max(1, round(mean)) if mean == mean else 1})
            for b in sizes:
                if model == EMBED:
                    feeds = {"text": np.array([SENTENCE] * b, dtype=np.object_)}
                    res.raw.append(
                        raw_bench(model, lambda f=feeds: text_model.predict(f), b, args.raw_seconds)
                    )
                else:
                    feeds = {TABULAR_IN: np.repeat(row, b, axis=0)}
                    res.raw.append(
                        raw_bench(model, lambda f=feeds: tab_model.predict(f), b, args.raw_seconds)
                    )

    report(res, levels, top, low)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [asdict(r) for r in res.runs],
                    "raw": [asdict(r) for r in res.raw],
                    "facts": res.facts,
                },
                indent=2,
            )
        )


# the report -------------------------------------------------------------------------------
def _f(x: float, digits: int = 1) -> str:
    if x != x:
        return "-"
    return f"{x:.{digits}f}" if abs(x) >= 0.1 or x == 0 else f"{x:.2g}"


def report(res: Results, levels: list[int], top: int, low: int) -> None:
    head = (
        f"{'model':<8}{'conc':>5} | {'served rps':>10}{'p50 ms':>8}{'p99 ms':>8}{'batch':>6}"
        f" | {'base rps':>9}{'p50 ms':>8}{'p99 ms':>8} | {'srv/base':>8}{'srv/raw':>8}"
    )
    print()
    print(head)
    print("-" * len(head))
    raw_best = {
        m: max((r for r in res.raw if r.model == m), key=lambda r: r.batch, default=None)
        for m in (EMBED, TABULAR)
    }
    for model in (EMBED, TABULAR):
        for c in levels:
            s = res.find("served", model, c)
            b = res.find("baseline", model, c)
            rb = raw_best[model]
            if s is None:
                continue
            ratio_b = s.rps / b.rps if b and b.rps else float("nan")
            ratio_r = s.rps / rb.rows_per_s if rb else float("nan")
            print(
                f"{model:<8}{c:>5} | {s.rps:>10.1f}{s.p50_ms:>8.2f}{s.p99_ms:>8.2f}"
                f"{_f(s.mean_batch):>6} | {_f(b.rps if b else float('nan')):>9}"
                f"{_f(b.p50_ms if b else float('nan'), 2):>8}"
                f"{_f(b.p99_ms if b else float('nan'), 2):>8} | {_f(ratio_b, 2):>8}"
                f"{_f(ratio_r, 2):>8}"
            )
        for r in (x for x in res.raw if x.model == model):
            print(
                f"{model:<8}{'raw':>5} | {r.rows_per_s:>10.1f}{_f(r.p50_ms, 2):>8}{'':>8}"
                f"{r.batch:>6} |   rows/s at batch {r.batch}, p50 per call"
            )
    for r in res.runs:
        if r.system == "floor":
            print(
                f"{r.model:<8}{r.concurrency:>5} | {r.rps:>10.1f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}"
                f"{'':>6} |   floor: bare ASGI, no auth/metering/batching, 2 workers"
            )
        if r.system in ("batching-off", "patch-live"):
            print(
                f"{r.model:<8}{r.concurrency:>5} | {r.rps:>10.1f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}"
                f"{_f(r.mean_batch):>6} |   {r.system} ({r.note})"
            )

    print("\ntargets (issue):")
    full = top == 32 and low == 1
    verdicts = []

    def verdict(name: str, ok: bool | None, detail: str) -> None:
        mark = "n/a" if ok is None else ("PASS" if ok else "MISS")
        if not full and ok is not None:
            mark = f"info ({mark} at c={top})"
        verdicts.append(mark)
        print(f"  {mark:<22} {name}: {detail}")

    es, el = res.find("served", EMBED, top), res.find("served", EMBED, low)
    ts, tb = res.find("served", TABULAR, top), res.find("baseline", TABULAR, top)
    er = raw_best[EMBED]
    e1 = next((r for r in res.raw if r.model == EMBED and r.batch == 1), None)
    if es and er:
        ratio = es.rps / er.rows_per_s
        verdict(
            f"embed c={top} served/raw >= 0.85, p99 <= 150 ms",
            ratio >= 0.85 and es.p99_ms <= 150,
            f"{es.rps:.1f} / {er.rows_per_s:.1f} rows/s (raw batch {er.batch}) = {ratio:.2f},"
            f" p99 {es.p99_ms:.1f} ms",
        )
    if el and e1:
        verdict(
            f"embed c={low} p50 <= 2x raw batch-1 latency",
            el.p50_ms <= 2 * e1.p50_ms if low == 1 else None,
            f"{el.p50_ms:.2f} ms vs 2 x {e1.p50_ms:.2f} ms = {2 * e1.p50_ms:.2f} ms"
            f" ({el.p50_ms / e1.p50_ms:.2f}x)",
        )
    if ts and tb:
        ratio = ts.rps / tb.rps
        verdict(
            f"tabular c={top} served/baseline >= 2.5, p99 <= 10 ms",
            ratio >= 2.5 and ts.p99_ms <= 10,
            f"{ts.rps:.1f} / {tb.rps:.1f} rps = {ratio:.2f}, p99 {ts.p99_ms:.2f} ms",
        )
        fl = res.find("floor", TABULAR, top)
        if fl:
            print(
                f"  {'':<22} (the bare-ASGI floor, doing the least Python can per request, makes"
                f" {fl.rps:.1f} rps = {fl.rps / tb.rps:.2f}x the baseline)"
            )
    off = res.find("batching-off", EMBED, top)
    if es and off:
        drop = es.rps / off.rps
        verdict(
            f"embed batching off drops >= 3x (c={top})",
            drop >= 3,
            f"{es.rps:.1f} -> {off.rps:.1f} rps = {drop:.2f}x ({off.note}; mean batch"
            f" {_f(off.mean_batch)})",
        )
    if off and e1 and er and er.batch > 1:
        print(
            f"  {'':<22} (the runtime itself gains {er.rows_per_s / e1.rows_per_s:.2f}x from"
            f" batch 1 to batch {er.batch}: the most any drop can show)"
        )
    live = res.find("patch-live", EMBED, top)
    if live and off:
        print(
            f"  {'':<22} (vs the adjacent run with batching still on, the live PATCH run:"
            f" {live.rps:.1f} -> {off.rps:.1f} rps = {live.rps / off.rps:.2f}x)"
        )
    if live:
        print(
            f"  {'BUG':<22} PATCH serving.max_batch_size=1 was not applied to the loaded model:"
            f" mean batch stayed {live.mean_batch:.1f} ({live.rps:.1f} rps); only a restart"
            " picked it up"
        )

    f = res.facts
    print("\nserver:")
    print(
        f"  PSS after the served runs: {f['server_pss_mb']:.0f} MB"
        f" (baseline, 2 workers + supervisor: {f.get('baseline_pss_mb', float('nan')):.0f} MB)"
    )
    print(f"  libtorch mapped into the server: {'yes' if f['server_torch_mapped'] else 'no'}")
    print(f"  first start to ready (incl. minilm ONNX export): {f['server_start_s']:.1f} s")
    print(
        f"  outputs served vs baseline, max |diff|: embed {f.get('embed_max_abs_diff', 0):.2e},"
        f" tabular {f.get('tabular_max_abs_diff', 0):.2e}"
    )
    print(f"\nCPU split per run (% of one core; {f['cores']} cores = {100 * f['cores']}%):")
    for r in res.runs:
        busy = f", runtime busy {r.busy_pct:.0f}%" if r.busy_pct == r.busy_pct else ""
        per_req = r.srv_cpu_pct * 10 / max(r.rps, 1e-9)
        print(
            f"  {r.system:<13} {r.model:<8} c={r.concurrency:<3} {r.tool:<6} load gen"
            f" {r.gen_cpu_pct:4.0f}%  server {r.srv_cpu_pct:4.0f}%  other {r.other_cpu_pct:4.0f}%"
            f"  server {per_req:6.3f} ms CPU/req{busy}  ({r.rps:.0f} rps, {r.errors} errors)"
        )
    for x in res.raw:
        print(
            f"  {'raw':<13} {x.model:<8} b={x.batch:<3} {'-':<6} this process {x.cpu_pct:4.0f}%"
            f"  other {x.other_cpu_pct:4.0f}%"
        )
    noisy = [r for r in res.runs if r.other_cpu_pct > 25] + [
        x for x in res.raw if x.other_cpu_pct > 25
    ]
    if noisy:
        print(
            f"  warning: {len(noisy)} measurement(s) shared the machine with other busy processes"
            " (other > 25%); rerun on a quiet machine before trusting small ratios"
        )
    check = next((r for r in res.runs if r.system == "loadgen-check"), None)
    ref = res.find("served", TABULAR, top)
    if check and ref:
        print(
            f"\nload generator check, tabular c={top}: {ref.tool} {ref.rps:.0f} rps at"
            f" {ref.gen_cpu_pct:.0f}% CPU ({ref.gen_cpu_pct / max(ref.rps, 1) * 10:.3f} ms CPU"
            f"/req) vs {check.tool} {check.rps:.0f} rps at {check.gen_cpu_pct:.0f}% CPU"
            f" ({check.gen_cpu_pct / max(check.rps, 1) * 10:.3f} ms CPU/req)"
        )


if __name__ == "__main__":
    main()
