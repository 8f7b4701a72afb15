"""`modelworks keys …`: create (with allowlist, limits, quotas), list, show, revoke,
bootstrap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

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
    err,
    fail,
    handled,
    out,
    quota_of,
)
from modelworks.commands.settings import settings_from

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    role: Annotated[
        str, typer.Option(help="admin, owner, developer, viewer or invoker.")
    ] = "developer",
    name: Annotated[str, typer.Option(help="A label to recognise the key by.")] = "",
    project: Annotated[str | None, typer.Option(help="Project of the key (admin keys).")] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models the key may read and call (default: all)."),
    ] = None,
    rate_limit: RateLimit = None,
    burst: Burst = None,
    quota_requests: QuotaRequests = None,
    quota_items: QuotaItems = None,
    quota_tokens: QuotaTokens = None,
    expires_at: Annotated[
        str | None, typer.Option(help="ISO 8601 time when the key stops working.")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key; the secret is printed once."""
    allow = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    with handled():
        k = client(url, api_key).create_key(
            role=role,
            name=name,
            expires_at=expires_at,
            project=project,
            models=allow,
            rate_limit=rate_limit,
            burst=burst,
            quota=quota_of(quota_requests, quota_items, quota_tokens),
        )
        if as_json:
            emit_json(k)
        else:
            scope = f", models {', '.join(k['models'])}" if k.get("models") else ""
            err.print(
                f"created {k['role']} key {k['id']} ({k['prefix']}…) in project {k['project']}"
                f"{scope}; the secret, shown once:"
            )
            print(k["key"])


@keys_app.command("bootstrap")
def keys_bootstrap(
    home: Annotated[Path | None, typer.Option(help="Data home [default: ~/.modelworks].")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Database URL (overrides the setting).")
    ] = None,
) -> None:
    """Mint an admin key straight in the database (for a lost key; needs access to the home)."""
    with handled():
        from modelworks.auth.keys import KeyService
        from modelworks.db import make_engine, make_sessionmaker, upgrade
        from modelworks.registry.projects import DEFAULT_PROJECT, ProjectService

        settings = settings_from(home=home, database_url=database_url)
        _require_server_database(settings)
        upgrade(settings.resolved_database_url)
        engine = make_engine(settings.resolved_database_url)
        try:
            sessions = make_sessionmaker(engine)
            project = ProjectService(sessions).get(DEFAULT_PROJECT).id
            key, secret = KeyService(sessions).create(
                project_id=project,
                role="admin",
                name="bootstrap (cli)",
                created_by="keys bootstrap",
            )
        finally:
            engine.dispose()
        err.print(f"created admin key {key.id} ({key.prefix}…); the secret, shown once:")
        print(secret)


def _require_server_database(settings: Any) -> None:
    """Refuse a database no server has used: a key minted in a fresh one (a new
    ~/.modelworks, say) would be rejected by the running server, with no hint why."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from modelworks.db import current_revision

    url = make_url(settings.resolved_database_url)
    where = (
        "point MODELWORKS_DATABASE_URL (or --database-url) at the server's database"
        if settings.database_url
        else "set MODELWORKS_HOME (or pass --home) to the folder `modelworks serve` uses"
    )
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not url.database or url.database == ":memory:" or not path.is_file():
            fail(f"no Modelworks database at {path}, so no server uses it; {where}")
        return  # the file exists: migrations below bring it up to date
    try:
        revision = current_revision(settings.resolved_database_url)
    except SQLAlchemyError as exc:
        fail(f"cannot open the database at {url} ({type(exc).__name__}); {where}")
    if revision is None:
        fail(f"the database at {url} has no Modelworks tables, so no server uses it; {where}")


@keys_app.command("show")
def keys_show(
    key_id: int, url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show a key and the limits it runs under: the tightest of its own and its project's."""
    with handled():
        k = client(url, api_key).get_key(key_id)
        if as_json:
            emit_json(k)
            return
        models = ", ".join(k["models"]) if k["models"] is not None else "all"
        if k["revoked_at"]:
            state = f"revoked {k['revoked_at']}"
        else:
            state = f"expires {k['expires_at']}" if k["expires_at"] else "never expires"
        used = str(k["last_used_at"])[:19] if k.get("last_used_at") else "never"
        out.print(
            Text.assemble(
                (f"key {k['id']}", "bold"),
                f" ({k['prefix']}…) {k['name']!r}\n" if k["name"] else f" ({k['prefix']}…)\n",
                f"{k['role']} in project {k['project']}; models: {models}; {state}\n",
                f"last used {used}",
            )
        )
        out.print(_limits_table(k["limits"]))


_FROM = {
    "key": "key",
    "project": "project (binds every key)",
    "key rate": "key's rate (1 s of it; no burst set)",
    "project rate": "project's rate (1 s of it; no burst set)",
}


def _limits_table(limits: dict[str, Any]) -> Table:
    sources = limits["sources"]
    t = Table("limit", "value", "from")
    rate = limits["rate_limit"]
    t.add_row(
        "rate", f"{rate:g} requests/s" if rate is not None else "none", _from(sources, "rate")
    )
    if rate is None:
        t.add_row("burst", "-", "no rate limit")
    else:
        t.add_row("burst", str(limits["burst"]), _from(sources, "burst"))
    for kind in ("requests", "items", "tokens"):
        value = limits["quota"].get(kind)
        shown = f"{value} per UTC day" if value is not None else "none"
        t.add_row(f"quota {kind}", shown, _from(sources, f"quota.{kind}"))
    return t


def _from(sources: dict[str, str], name: str) -> str:
    source = sources.get(name)
    return _FROM.get(source, source) if source else "-"


@keys_app.command("list")
def keys_list(url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List API keys (prefixes only; secrets are never shown again) and when each was last
    used (recorded within seconds)."""
    with handled():
        rows = client(url, api_key).list_keys()
        if as_json:
            emit_json(rows)
            return
        t = Table(
            "id", "prefix", "name", "role", "project", "created", "last used", "expires", "revoked"
        )
        for k in rows:
            t.add_row(
                str(k["id"]),
                k["prefix"] + "…",
                k["name"],
                k["role"],
                k["project"],
                str(k["created_at"])[:19],
                str(k.get("last_used_at") or "never")[:19],
                str(k["expires_at"] or "")[:19],
                str(k["revoked_at"] or "")[:19],
            )
        out.print(t)


@keys_app.command("revoke")
def keys_revoke(
    key_id: int, url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Revoke a key by id; it stops working at once."""
    with handled():
        k = client(url, api_key).revoke_key(key_id)
        emit_json(k) if as_json else out.print(f"revoked key {k['id']} ({k['prefix']}…)")
