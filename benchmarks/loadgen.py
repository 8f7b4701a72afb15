"""A closed-loop HTTP load generator: N connections, each posting the same body back to back.

    python benchmarks/loadgen.py --url http://127.0.0.1:8000/v2/models/m/infer \
        --body-file body.json --concurrency 8 --duration 10 --warmup 2 \
        --header 'Authorization: Bearer mw_…'

Prints one JSON line: {requests, rps, p50_ms, p99_ms, errors, cpu_s, duration_s}. `requests`
counts answers (any status) to requests started inside the measured window; latencies are
those of the successful (2xx) ones; `cpu_s` is this process's CPU time in the window, so the
caller can tell whether the generator itself was the bottleneck. asyncio + httpx in one
process: on a small machine it can saturate before the server does (wrk is far cheaper).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    warmup: float,
    timeout: float,
) -> dict[str, float | int]:
    latencies: list[float] = []
    answered = 0
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json", **headers}
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:
        begin = time.perf_counter()
        measure_from = begin + warmup
        end = measure_from + duration
        cpu: list[float] = []

        async def mark_window() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu.append(time.process_time())

        async def worker() -> None:
            nonlocal answered, errors
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                try:
                    r = await client.post(url, content=body)
                    ok = 200 <= r.status_code < 300
                except httpx.HTTPError:
                    ok = False
                t1 = time.perf_counter()
                if t0 < measure_from:
                    continue
                answered += 1
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

        await asyncio.gather(mark_window(), *(worker() for _ in range(concurrency)))
        cpu_s = time.process_time() - cpu[0]
        elapsed = time.perf_counter() - measure_from
    latencies.sort()
    return {
        "requests": answered,
        "rps": answered / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
        "cpu_s": cpu_s,
        "duration_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument(
        "--header", action="append", default=[], help="'Name: value'; repeat for more"
    )
    args = parser.parse_args()
    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            parser.error(f"--header {h!r} must look like 'Name: value'")
        headers[name.strip()] = value.strip()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        run(
            args.url,
            args.body_file.read_bytes(),
            headers,
            args.concurrency,
            args.duration,
            args.warmup,
            args.timeout,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
