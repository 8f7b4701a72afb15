"""The cost of auth + metering on the inference path, measured side by side in one run.

    .venv/bin/python benchmarks/auth_overhead.py [--duration 10] [--concurrency 32]

Starts the server twice on the same home, serving the tabular MLP (10→64→64→2, one row per
OIP v2 JSON request): once as shipped (API key checked on every request, usage metered per
key x model x hour, rate-limit bucket and daily quota on the key), once with
`--no-auth` and `MODELWORKS_METERING=false`. Load comes from wrk when installed (apt-get
install wrk), else from benchmarks/loadgen.py. Prints requests/s, p50, p99 and the ratio.
Target: the protected server keeps >= 90% of the unprotected throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving as sv


def start(
    home: Path, tmp: Path, *, protected: bool, key: str | None
) -> tuple[sv.Process, str, str]:
    port = sv.free_port()
    env = {
        **os.environ,
        "MODELWORKS_HOME": str(home),
        "MODELWORKS_LOG_LEVEL": "warning",
        "MODELWORKS_METERING": "true" if protected else "false",
    }
    args = [sys.executable, "-m", "modelworks", "serve", "--port", str(port)]
    if not protected:
        args.append("--no-auth")
    out = tmp / f"serve-{port}.out"
    proc = sv.Process(args, env, tmp / "serve.log", out)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/readyz", timeout=120)
    if key is None:
        key = out.read_text().splitlines()[0].strip()
    return proc, url, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    tool = "wrk" if shutil.which("wrk") else "python"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        gen = sv.LoadGen(tool, tmp)
        body = tmp / "body.json"
        body.write_text(
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": sv.TABULAR_IN,
                            "shape": [1, sv.FEATURES],
                            "datatype": "FP32",
                            "data": sv.tabular_row(),
                        }
                    ]
                }
            )
        )
        onnx_file = sv.build_tabular_onnx(tmp / "tabular.onnx")
        results = {}
        key = None
        for protected in (True, False, True, False):  # interleaved: the machine's noise is shared
            proc, url, key = start(home, tmp, protected=protected, key=key)
            try:
                headers = {"Authorization": f"Bearer {key}"} if protected else {}
                if protected and "tabular" not in results.get("models", ""):
                    from modelworks.client import Client

                    with Client(url, key) as c:
                        c.create_model("tabular", task="tabular-classification")
                        c.push("tabular", onnx_file)
                        # a realistic invoker key: one model, a generous rate limit and quota
                        invoker = c.create_key(
                            role="invoker",
                            models=["tabular"],
                            rate_limit=100_000,
                            burst=100_000,
                            quota={"requests": 10**9},
                        )
                    results["models"] = "tabular"
                    results["invoker"] = invoker["key"]
                if protected:
                    headers = {"Authorization": f"Bearer {results['invoker']}"}
                httpx.get(f"{url}/v2/models/tabular/ready", headers=headers, timeout=60)
                target = f"{url}/v2/models/tabular/infer"
                gen.run(target, body, headers, args.concurrency, args.warmup)
                res = gen.run(target, body, headers, args.concurrency, args.duration)
                label = "auth + metering" if protected else "no auth, no metering"
                results.setdefault(label, []).append(res)
                rps, p50, p99 = (float(res[k]) for k in ("rps", "p50_ms", "p99_ms"))
                print(
                    f"  {label:<22} {rps:>9.1f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                    f"  errors {int(res['errors'])}",
                    flush=True,
                )
            finally:
                proc.stop()
        on = sum(float(r["rps"]) for r in results["auth + metering"]) / 2
        off = sum(float(r["rps"]) for r in results["no auth, no metering"]) / 2
        print(
            f"\nload generator: {tool}; concurrency {args.concurrency}; "
            f"{args.duration:g} s runs, two each"
        )
        print(
            f"auth + metering: {on:.1f} req/s; without: {off:.1f} req/s; "
            f"ratio {on / off:.2f} (target >= 0.90: {'PASS' if on / off >= 0.9 else 'MISS'})"
        )


if __name__ == "__main__":
    main()
