"""Server CPU per inference request, this checkout vs another commit's, side by side.

    git worktree add /tmp/mw-old <commit>
    .venv/bin/python benchmarks/request_cpu.py --against /tmp/mw-old

Calls the ASGI app directly (no client, no socket, so no load generator in the numbers) with an
OIP v2 JSON infer on a 4 -> 2 linear ONNX model, authenticated and metered as in production,
with and without `Accept-Encoding: gzip`. Each round runs both checkouts in fresh processes,
alternating, and the report gives medians over rounds and the new/old ratio. Process CPU time
counts every thread, the batcher's included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ACCEPTS = ("identity", "gzip, deflate")


async def measure(requests: int) -> dict[str, float]:
    """µs of process CPU per request for each Accept-Encoding (run inside one checkout)."""
    import httpx

    from modelworks.api.app import create_app
    from modelworks.api.services import Services
    from modelworks.db import upgrade
    from modelworks.demo import build_demo_onnx
    from modelworks.settings import Settings

    home = Path(tempfile.mkdtemp())
    settings = Settings(home=home, allowed_hosts="bench")
    upgrade(settings.resolved_database_url)
    svc = Services.build(settings)
    key = svc.keys.bootstrap_admin()
    app = create_app(settings, svc)
    auth = {"Authorization": f"Bearer {key}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
            await c.post("/api/v1/models", json={"name": "m"}, headers=auth)
            with build_demo_onnx(home / "m.onnx").open("rb") as fh:
                r = await c.post("/api/v1/models/m/versions", files={"file": fh}, headers=auth)
                assert r.status_code == 201, r.text
        data = [{"name": "sensors", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
        body = json.dumps({"inputs": data}).encode()
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        out = {}
        for accept in ACCEPTS:
            headers = [
                (b"host", b"bench"),
                (b"authorization", f"Bearer {key}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"accept-encoding", accept.encode()),
            ]
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v2/models/m/infer",
                "raw_path": b"/v2/models/m/infer",
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 5000),
                "server": ("bench", 80),
            }
            for _ in range(requests // 4):  # warm: model loaded, caches filled
                await app(dict(scope), receive, send)
            started = time.process_time()
            for _ in range(requests):
                await app(dict(scope), receive, send)
            out[accept] = (time.process_time() - started) / requests * 1e6
        assert set(statuses) == {200}, set(statuses)
        return out


def run_in(checkout: Path, requests: int) -> dict[str, float]:
    code = (
        f"import sys, json, asyncio; sys.path.insert(0, {str(checkout)!r}); "
        f"sys.path.insert(1, {str(ROOT / 'benchmarks')!r}); import request_cpu; "
        f"print(json.dumps(asyncio.run(request_cpu.measure({requests}))))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    new: dict[str, list[float]] = {a: [] for a in ACCEPTS}
    old: dict[str, list[float]] = {a: [] for a in ACCEPTS}
    for i in range(args.rounds):
        for checkout, into in ((args.against, old), (ROOT, new)):
            for accept, us in run_in(checkout.resolve(), args.requests).items():
                into[accept].append(us)
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    print(f"server CPU per OIP infer request, µs (median of {args.rounds} rounds)")
    print(f"{'Accept-Encoding':16} {'other':>8} {'this':>8} {'this/other':>11}")
    for accept in ACCEPTS:
        o, n = statistics.median(old[accept]), statistics.median(new[accept])
        print(f"{accept:16} {o:8.0f} {n:8.0f} {n / o:11.2f}")


if __name__ == "__main__":
    main()
