"""Jobs over REST: listing, reading, cancelling, logs and the Server-Sent Events stream, as
the key's project, role and model allowlist allow. The test plays the worker through the real
queue (claim, report, succeed)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from modelworks.api.services import Services
from tests.conftest import LiveServer


def key(http: httpx.Client, **body: Any) -> str:
    r = http.post("/api/v1/keys", json=body)
    assert r.status_code == 201, r.text
    secret: str = r.json()["key"]
    return secret


def as_key(http: httpx.Client, secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_list_show_cancel_and_logs(http: httpx.Client, services: Services) -> None:
    pid = services.default_project_id
    a = services.jobs.enqueue(pid, "export", {"model": "pump"})
    b = services.jobs.enqueue(pid, "export", {"model": "press"})
    listed = http.get("/api/v1/jobs").json()
    assert [j["id"] for j in listed] == [b.id, a.id]  # newest first
    assert listed[0]["model"] == "press" and listed[0]["status"] == "queued"
    assert http.get("/api/v1/jobs", params={"status": "queued", "limit": 1}).json()[0]["id"] == b.id
    bad = http.get("/api/v1/jobs", params={"status": "done"})
    assert bad.status_code == 422 and "succeeded" in bad.text

    assert services.jobs.claim("w") is not None  # a is running now
    lines = [f"line {i}" for i in range(5)]
    assert services.jobs.report(a.id, "w", [{"phase": "train", "progress": 0.25}], lines)
    shown = http.get(f"/api/v1/jobs/{a.id}").json()
    assert (shown["status"], shown["phase"], shown["progress"]) == ("running", "train", 0.25)
    page = http.get(f"/api/v1/jobs/{a.id}/logs", params={"limit": 3}).json()
    assert [x["line"] for x in page["lines"]] == lines[:3]
    rest = http.get(f"/api/v1/jobs/{a.id}/logs", params={"after": page["next"]}).json()
    assert [x["line"] for x in rest["lines"]] == lines[3:]

    cancelled = http.post(f"/api/v1/jobs/{b.id}/cancel").json()
    assert cancelled["status"] == "cancelled"  # queued: at once
    flagged = http.post(f"/api/v1/jobs/{a.id}/cancel").json()
    assert (flagged["status"], flagged["cancel_requested"]) == ("running", True)
    again = http.post(f"/api/v1/jobs/{b.id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.text
    assert http.get("/api/v1/jobs/999999").status_code == 404


def test_roles_projects_and_model_allowlists(http: httpx.Client, services: Services) -> None:
    pid = services.default_project_id
    mine = services.jobs.enqueue(pid, "export", {"model": "pump"})
    other_model = services.jobs.enqueue(pid, "export", {"model": "press"})
    assert http.post("/api/v1/projects", json={"name": "tenant-b"}).status_code == 201
    outsider = key(http, role="owner", project="tenant-b")
    r = http.get(f"/api/v1/jobs/{mine.id}", headers=as_key(http, outsider))
    assert r.status_code == 404  # another project's job is missing, not forbidden
    assert http.get("/api/v1/jobs", headers=as_key(http, outsider)).json() == []

    viewer = key(http, role="viewer")
    assert http.get(f"/api/v1/jobs/{mine.id}", headers=as_key(http, viewer)).status_code == 200
    r = http.post(f"/api/v1/jobs/{mine.id}/cancel", headers=as_key(http, viewer))
    assert r.status_code == 403

    limited = key(http, role="developer", models=["pump"])
    seen = http.get("/api/v1/jobs", headers=as_key(http, limited)).json()
    assert [j["id"] for j in seen] == [mine.id]
    r = http.get(f"/api/v1/jobs/{other_model.id}", headers=as_key(http, limited))
    assert r.status_code == 404
    r = http.post(f"/api/v1/jobs/{other_model.id}/cancel", headers=as_key(http, limited))
    assert r.status_code == 404
    assert services.jobs.get(other_model.id).status == "queued"


def read_events(url: str, headers: dict[str, str], timeout: float = 30) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        current: dict[str, Any] = {}
        for line in r.iter_lines():
            if line.startswith(":"):
                continue
            if line.startswith("id:"):
                current["id"] = int(line[3:])
            elif line.startswith("event:"):
                current["type"] = line[6:].strip()
            elif line.startswith("data:"):
                current["data"] = json.loads(line[5:])
            elif not line and current:
                events.append(current)
                current = {}
    return events


def test_events_stream_live_and_resume(
    live_server: LiveServer, services: Services, admin_key: str
) -> None:
    pid = services.default_project_id
    job = services.jobs.enqueue(pid, "export", {"model": "pump"})
    headers = {"Authorization": f"Bearer {admin_key}"}
    url = f"{live_server.url}/api/v1/jobs/{job.id}/events"

    def work() -> None:
        time.sleep(0.3)
        assert services.jobs.claim("w") is not None
        for step in range(3):
            time.sleep(0.2)
            services.jobs.report(job.id, "w", [{"progress": (step + 1) / 4, "step": step}])
        services.jobs.report(job.id, "w", logs=["done training"])
        services.jobs.succeed(job.id, "w", {"accuracy": 0.93})

    worker = threading.Thread(target=work)
    worker.start()
    started = time.monotonic()
    events = read_events(url, headers)  # ends by itself after the final status
    worker.join()
    assert time.monotonic() - started < 20
    types = [(e["type"], e["data"].get("status") or e["data"].get("step")) for e in events]
    assert types[:2] == [("status", "queued"), ("status", "running")]
    assert [e["data"]["step"] for e in events if e["type"] == "progress"] == [0, 1, 2]
    assert types[-1] == ("status", "succeeded")
    assert any(e["type"] == "log" and e["data"]["line"] == "done training" for e in events)

    # a follower that saw up to the second progress event gets only the rest
    seen = [e for e in events if e["type"] == "progress"][1]["id"]
    rest = read_events(url, {**headers, "Last-Event-ID": str(seen)})
    assert [e["id"] for e in rest] == [e["id"] for e in events if e["id"] > seen]
    # one that saw the end gets an empty stream that ends at once
    assert read_events(url, {**headers, "Last-Event-ID": str(events[-1]["id"])}, 10) == []
    bad = httpx.get(url, headers={**headers, "Last-Event-ID": "x1"})
    assert bad.status_code == 422
