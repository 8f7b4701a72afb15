"""`modelworks projects …`, `modelworks usage` and `modelworks audit`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from modelworks.commands.common import (
    Burst,
    JsonOpt,
    KeyOpt,
    QuotaItems,
    QuotaRequests,
    QuotaTokens,
    RateLimit,
    UrlOpt,
    client,
    emit_json,
    handled,
    out,
    quota_of,
)

projects_app = typer.Typer(help="Projects (tenants).", no_args_is_help=True)


@projects_app.command("create")
def projects_create(
    name: str,
    description: Annotated[str, typer.Option()] = "",
    rate_limit: RateLimit = None,
    burst: Burst = None,
    quota_requests: QuotaRequests = None,
    quota_items: QuotaItems = None,
    quota_tokens: QuotaTokens = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project (admin keys), with limits for its keys that its owners may lower but
    not raise."""
    with handled():
        p = client(url, api_key).create_project(
            name,
            description=description,
            rate_limit=rate_limit,
            burst=burst,
            quota=quota_of(quota_requests, quota_items, quota_tokens),
        )
        emit_json(p) if as_json else out.print(f"created project [bold]{p['name']}[/]")


@projects_app.command("list")
def projects_list(url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List projects (admins see all, others their own)."""
    with handled():
        rows = client(url, api_key).list_projects()
        if as_json:
            emit_json(rows)
            return
        t = Table("name", "rate limit", "burst", "quota", "description")
        for p in rows:
            quota = ", ".join(f"{k} {v}" for k, v in p["quota"].items())
            t.add_row(
                p["name"],
                str(p["rate_limit"] or "-"),
                str(p["burst"] or "-"),
                quota,
                p["description"][:50],
            )
        out.print(t)


@projects_app.command("update")
def projects_update(
    name: str,
    description: Annotated[str | None, typer.Option()] = None,
    rate_limit: RateLimit = None,
    burst: Burst = None,
    quota_requests: QuotaRequests = None,
    quota_items: QuotaItems = None,
    quota_tokens: QuotaTokens = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a project's description or the limits of its keys (an admin's are ceilings;
    an owner may only lower them)."""
    changes: dict[str, Any] = {
        k: v
        for k, v in {"description": description, "rate_limit": rate_limit, "burst": burst}.items()
        if v is not None
    }
    quota = quota_of(quota_requests, quota_items, quota_tokens)
    if quota is not None:
        changes["quota"] = quota
    with handled():
        p = client(url, api_key).update_project(name, **changes)
        emit_json(p) if as_json else out.print(f"updated project [bold]{p['name']}[/]")


@projects_app.command("delete")
def projects_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a project with its models, versions and keys (admin keys)."""
    if not yes and not typer.confirm(f"delete project {name!r} with all its models and keys?"):
        raise typer.Exit(1)
    with handled():
        r = client(url, api_key).delete_project(name)
        emit_json(r) if as_json else out.print(f"deleted project {name}")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """A spreadsheet must not run a cell as a formula: prefix those with a quote."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_START):
        return "'" + text
    return text


def usage(
    project: Annotated[str | None, typer.Option(help="Project (admin keys: any).")] = None,
    key: Annotated[int | None, typer.Option(help="Only this key id.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="From (ISO 8601).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Up to (ISO 8601), exclusive.")] = None,
    group_by: Annotated[
        str, typer.Option(help="Comma-separated: hour, day, key, model, version, project.")
    ] = "day,key,model",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV (formulas neutralised).")
    ] = False,
) -> None:
    """What each key used of each model: requests, items, tokens, compute time, errors."""
    import csv

    with handled():
        rows = client(url, api_key).usage(
            project=project, key=key, model=model, start=start, end=end, group_by=group_by
        )
        if as_json:
            emit_json(rows)
            return
        groups = [g.strip() for g in group_by.split(",") if g.strip()]
        columns = [*groups, "requests", "items", "tokens", "compute_ms", "errors"]
        if as_csv:
            writer = csv.writer(sys.stdout)
            writer.writerow(columns)
            for r in rows:
                writer.writerow([csv_cell(r.get(c)) for c in columns])
            return
        peak = max((r["requests"] for r in rows), default=0) or 1
        t = Table(*columns, "")
        for r in rows:
            bar = "█" * max(1, round(20 * r["requests"] / peak)) if r["requests"] else ""
            t.add_row(*[str(r.get(c, "")) for c in columns], f"[cyan]{bar}[/]")
        out.print(t)


def audit(
    project: Annotated[str | None, typer.Option(help="Project (admin keys: any).")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. model.delete, auth.failure.")] = None,
    actor: Annotated[str | None, typer.Option(help="Key prefix.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit log, newest first: who did what to which target, from where."""
    with handled():
        rows = client(url, api_key).audit(project=project, action=action, actor=actor, limit=limit)
        if as_json:
            emit_json(rows)
            return
        t = Table("at", "actor", "action", "target", "outcome", "client")
        for e in rows:
            style = "red" if e["outcome"] != "ok" else ""
            t.add_row(
                e["at"][:19],
                e["actor"],
                e["action"],
                e["target"],
                f"[{style}]{e['outcome']}[/]" if style else e["outcome"],
                e["client"],
            )
        out.print(t)
