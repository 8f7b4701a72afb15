"""`modelworks jobs list|show|follow|logs|cancel` against a live server, the test playing the
worker through the real queue; `follow`'s exit status says how the job ended."""

from __future__ import annotations

import json
import threading
import time

import pytest

from modelworks.api.services import Services
from modelworks.jobs.queue import JobView
from tests.conftest import LiveServer
from tests.test_cli import Cli, assert_one_line_error, plain

pytestmark = pytest.mark.socket


@pytest.fixture
def cli(live_server: LiveServer, admin_key: str) -> Cli:
    return Cli(live_server, admin_key)


def ran(services: Services, job: JobView, logs: int = 2) -> None:
    """Play the worker: claim `job`, report progress with metrics and log lines."""
    claimed = services.jobs.claim("w")
    assert claimed is not None and claimed.id == job.id
    progress = {"phase": "train", "progress": 0.5, "step": 1, "metrics": {"loss": 0.25}}
    assert services.jobs.report(job.id, "w", [progress], [f"line {i}" for i in range(logs)])


def test_list_show_logs_and_cancel(cli: Cli, services: Services) -> None:
    pid = services.default_project_id
    a = services.jobs.enqueue(pid, "export", {"model": "pump", "version": 3})
    b = services.jobs.enqueue(pid, "export", {"model": "press", "version": 1})
    assert [j["id"] for j in cli.json("jobs", "list")] == [b.id, a.id]
    assert [j["id"] for j in cli.json("jobs", "list", "--limit", "1", "--before", str(b.id))] == [
        a.id
    ]
    table = plain(cli.ok("jobs", "list").stdout)
    assert "pump:3" in table and "press:1" in table and "queued" in table
    result = cli("jobs", "list", "--status", "done")
    assert result.exit_code == 2 and "succeeded" in plain(result.stderr)

    ran(services, a, logs=3)
    shown = cli.json("jobs", "show", str(a.id))
    assert (shown["status"], shown["phase"], shown["progress"]) == ("running", "train", 0.5)
    text = plain(cli.ok("jobs", "show", str(a.id)).stdout)
    assert f"job {a.id}" in text and "50% (train)" in text and '"model": "pump"' in text
    assert [x["line"] for x in cli.json("jobs", "logs", str(a.id))["lines"]] == [
        "line 0",
        "line 1",
        "line 2",
    ]
    result = cli.ok("jobs", "logs", str(a.id), "--limit", "2")
    assert plain(result.stdout).splitlines() == ["line 0", "line 1"]
    assert "--after" in plain(result.stderr)  # how to get the rest

    assert cli.json("jobs", "cancel", str(b.id))["status"] == "cancelled"
    flagged = plain(cli.ok("jobs", "cancel", str(a.id)).stdout)
    assert "within seconds" in flagged and services.jobs.get(a.id).cancel_requested
    message = assert_one_line_error(cli("jobs", "cancel", str(b.id)))
    assert "already cancelled" in message
    message = assert_one_line_error(cli("jobs", "show", "999999"))
    assert "not found" in message and "modelworks jobs list" in message


def test_follow_a_live_job_to_success(cli: Cli, services: Services) -> None:
    job = services.jobs.enqueue(services.default_project_id, "export", {"model": "pump"})

    def work() -> None:
        time.sleep(0.3)  # the follower is connected and waiting by now, or soon
        ran(services, job)
        assert services.jobs.succeed(job.id, "w", {"accuracy": 0.9})

    worker = threading.Thread(target=work)
    worker.start()
    result = cli.ok("jobs", "follow", str(job.id))
    worker.join()
    lines = plain(result.stdout).splitlines()
    assert lines[:2] == ["status queued", "status running"]
    assert "train 50% step 1 loss=0.25" in lines
    assert lines[-4:] == ["line 0", "line 1", "status succeeded", f"job {job.id} succeeded"]


def test_follow_exit_status_says_how_the_job_ended(cli: Cli, services: Services) -> None:
    pid = services.default_project_id
    failed = services.jobs.enqueue(pid, "export", {"model": "pump"})
    ran(services, failed)
    assert services.jobs.fail(failed.id, "w", "out of memory", retry=False) == "failed"
    result = cli("jobs", "follow", str(failed.id))
    assert result.exit_code == 1
    assert plain(result.stderr).strip() == f"error: job {failed.id} failed: out of memory"
    assert "line 1" in result.stdout  # what it printed on the way

    cancelled = services.jobs.enqueue(pid, "export", {"model": "pump"})
    services.jobs.cancel(cancelled.id)
    result = cli("jobs", "follow", str(cancelled.id), "--json")
    assert result.exit_code == 1 and "cancelled" in plain(result.stderr)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["data"]["status"] for e in events] == ["queued", "cancelled"]
    assert all(e["type"] == "status" and isinstance(e["id"], int) for e in events)

    succeeded = services.jobs.enqueue(pid, "export", {"model": "pump"})
    ran(services, succeeded)
    assert services.jobs.succeed(succeeded.id, "w", {})
    events = [
        json.loads(x)
        for x in cli.ok("jobs", "follow", str(succeeded.id), "--json").stdout.splitlines()
    ]
    assert [e["type"] for e in events] == ["status", "status", "progress", "log", "log", "status"]
    assert events[2]["data"]["metrics"] == {"loss": 0.25}

    message = assert_one_line_error(cli("jobs", "follow", "999999"))
    assert "modelworks jobs list" in message
