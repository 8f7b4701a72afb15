"""`modelworks jobs …`: list, show, follow (a progress bar with the latest metrics), logs,
cancel.

`follow` exits 0 when the job succeeded and 1 when it failed or was cancelled, so a script
can wait on a job: `modelworks jobs follow 7 && modelworks models alias …`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from modelworks.commands.common import (
    JsonOpt,
    KeyOpt,
    UrlOpt,
    client,
    emit_json,
    err,
    fail,
    handled,
    out,
)

jobs_app = typer.Typer(help="Background jobs: exports, training.", no_args_is_help=True)
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
_STATUS_STYLE = {
    "queued": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}
JobArg = Annotated[
    int, typer.Argument(min=1, metavar="JOB", help="Job id (`modelworks jobs list`).")
]


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option(help=f"Only jobs in this status: {', '.join(STATUSES)}.")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind (e.g. export).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 50,
    before: Annotated[
        int | None, typer.Option(min=1, help="Jobs older than this id (to page on).")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the project's jobs, newest first."""
    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"use one of {', '.join(STATUSES)}", param_hint="--status")
    with handled():
        rows = client(url, api_key).jobs.list(status=status, kind=kind, limit=limit, before=before)
        if as_json:
            emit_json(rows)
            return
        if not rows:
            out.print("no jobs" + (f" {status}" if status else "") + " yet")
            return
        t = Table("id", "kind", "model", "status", "progress", "phase", "created", "finished")
        for j in rows:
            model = j["model"] or "-"
            if j["params"].get("version") is not None and j["model"]:
                model = f"{j['model']}:{j['params']['version']}"
            t.add_row(
                str(j["id"]),
                j["kind"],
                model,
                _status(j["status"]),
                f"{j['progress']:.0%}",
                j["phase"] or "-",
                _when(j["created_at"]),
                _when(j["finished_at"]),
            )
        out.print(t)
        if len(rows) == limit:
            out.print(f"older jobs: `modelworks jobs list --before {rows[-1]['id']}`")


@jobs_app.command("show")
def jobs_show(
    job_id: JobArg, url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show a job: status, progress, parameters, result or error, attempts, times."""
    with handled():
        j = client(url, api_key).jobs.get(job_id)
        if as_json:
            emit_json(j)
            return
        out.print(
            Text.assemble(
                (f"job {j['id']}", "bold"),
                f" ({j['kind']}) ",
                _status(j["status"]),
                " (cancel requested)" if j["cancel_requested"] and j["status"] == "running" else "",
            )
        )
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        t.add_row("progress", f"{j['progress']:.0%}" + (f" ({j['phase']})" if j["phase"] else ""))
        t.add_row("attempts", f"{j['attempts']} of {j['max_attempts']}")
        if j["worker"]:
            t.add_row("worker", j["worker"])
        t.add_row("created", f"{_when(j['created_at'])} by {j['created_by'] or '-'}")
        t.add_row("started", _when(j["started_at"]))
        t.add_row("finished", _when(j["finished_at"]))
        t.add_row("params", json.dumps(j["params"], sort_keys=True))
        if j["result"]:
            t.add_row("result", json.dumps(j["result"], sort_keys=True))
        if j["error"]:
            t.add_row("error", Text(j["error"], style="red"))
        out.print(t)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: JobArg, url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a job: a queued one ends at once, a running one within seconds."""
    with handled():
        j = client(url, api_key).jobs.cancel(job_id)
        if as_json:
            emit_json(j)
        elif j["status"] == "cancelled":
            out.print(f"cancelled job {j['id']}")
        else:
            out.print(
                f"asked job {j['id']} to stop; its worker stops it within seconds "
                f"(`modelworks jobs follow {j['id']}` to see it end)"
            )


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobArg,
    after: Annotated[int, typer.Option(min=0, help="Lines after this line id.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=5000, help="At most this many lines.")] = 500,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a job's log lines (a page of them: `--after` the last id shown for more)."""
    with handled():
        page = client(url, api_key).jobs.logs(job_id, after=after, limit=limit)
        if as_json:
            emit_json(page)
            return
        for line in page["lines"]:
            out.print(Text(line["line"]), soft_wrap=True)
        if len(page["lines"]) == limit:
            err.print(f"more: `modelworks jobs logs {job_id} --after {page['next']}`")


def _metrics(data: dict[str, Any]) -> str:
    parts = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in (data.get("metrics") or {}).items()
    ]
    if data.get("step") is not None:
        parts.insert(0, f"step {data['step']}")
    if data.get("eta_s") is not None:
        parts.append(f"eta {int(data['eta_s'])}s")
    return " ".join(parts)


def _line(event: dict[str, Any]) -> Text:
    """An event as one line, for output that is not a terminal (or alongside the bar)."""
    data = event["data"]
    if event["type"] == "log":
        return Text(str(data.get("line", "")))
    if event["type"] == "progress":
        shown = [data.get("phase") or "progress"]
        if data.get("progress") is not None:
            shown.append(f"{data['progress']:.0%}")
        for extra in (_metrics(data), data.get("message") or ""):
            if extra:
                shown.append(extra)
        return Text(" ".join(shown), style="dim")
    status = str(data.get("status", ""))
    text = Text.assemble("status ", _status(status))
    if data.get("cancel_requested"):
        text.append(" (cancel requested)")
    if data.get("error"):
        text.append(f": {data['error']}")
    return text


class _Bar:
    """The job's phase, a bar, its percentage and the latest metrics, drawn on stderr when it
    is a terminal; log lines and status changes print above it."""

    def __init__(self, job_id: int, show: bool) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=err,
            disable=not show,
        )
        self.show = show
        self.task = self.progress.add_task(f"job {job_id}", total=1.0, metrics="")

    def event(self, event: dict[str, Any]) -> None:
        data = event["data"]
        if event["type"] == "progress":
            changes: dict[str, Any] = {"metrics": _metrics(data) or data.get("message") or ""}
            if data.get("phase"):
                changes["description"] = data["phase"]
            if data.get("progress") is not None:
                changes["completed"] = float(data["progress"])
            self.progress.update(self.task, **changes)
            if self.show:
                return
        elif event["type"] == "status" and data.get("status") == "succeeded":
            self.progress.update(self.task, completed=1.0)
        (self.progress.console if self.show else out).print(_line(event), soft_wrap=True)


@jobs_app.command("follow")
def jobs_follow(
    job_id: JobArg,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a job until it ends: a progress bar with its latest metrics, its log lines and
    status changes. Exit status 0 when it succeeded, 1 when it failed or was cancelled.
    With --json: one event per line."""
    with handled():
        follow(client(url, api_key), job_id, as_json)


def follow(c: Any, job_id: int, as_json: bool) -> None:
    """Follow job `job_id` to its end (see `jobs follow`); exit status 1 unless it succeeded."""
    final: dict[str, Any] = {}
    events = c.jobs.follow(job_id)
    bar = _Bar(job_id, show=not as_json and err.is_terminal)
    try:
        with bar.progress:
            for event in events:
                if as_json:
                    print(json.dumps(event, separators=(",", ":")), flush=True)
                else:
                    bar.event(event)
                if event["type"] == "status":
                    final = event["data"]
    except KeyboardInterrupt:
        err.print(
            f"stopped following job {job_id}; it keeps running "
            f"(`modelworks jobs cancel {job_id}` stops it)"
        )
        raise typer.Exit(130) from None
    status = final.get("status")
    if status not in ("succeeded", "failed", "cancelled"):
        fail(
            f"the event stream of job {job_id} ended before the job did; "
            f"see where it stands with `modelworks jobs show {job_id}`"
        )
    if status == "succeeded":
        if not as_json:
            out.print(f"job {job_id} [green]succeeded[/]")
        return
    why = f": {final['error']}" if final.get("error") else ""
    fail(f"job {job_id} {status}{why}")
