"""The `modelworks` command line. Remote commands talk to the server through the SDK.

Exit codes: 0 done, 1 failed (the message says how to fix it), 2 usage error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from modelworks import __version__
from modelworks.errors import ModelworksError

app = typer.Typer(
    help="Modelworks: register, serve and meter models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Models, versions and aliases.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects (tenants).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(projects_app, name="projects")

out = Console()
err = Console(stderr=True)

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="MODELWORKS_URL", help="Server URL [default: http://127.0.0.1:8000]."
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="MODELWORKS_API_KEY", help="API key (mw_…).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_open_clients: list[Any] = []


@contextmanager
def handled() -> Iterator[None]:
    """Errors become one line on stderr with exit code 1; tracebacks only with MODELWORKS_DEBUG."""
    try:
        yield
    except ModelworksError as exc:
        if os.environ.get("MODELWORKS_DEBUG"):
            raise
        fail(exc.message)
    finally:
        while _open_clients:
            _open_clients.pop().close()


def client(url: str | None, api_key: str | None) -> Any:
    """An SDK client, closed when the surrounding `handled()` block ends."""
    from modelworks.client import Client

    c = Client(url, api_key)
    _open_clients.append(c)
    return c


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# server ----------------------------------------------------------------------------------
def _settings(**overrides: Any) -> Any:
    from modelworks.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 8000].")] = None,
    home: Annotated[Path | None, typer.Option(help="Data home [default: ~/.modelworks].")] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Register the demo model if missing.")
    ] = False,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys (loopback only).")
    ] = False,
) -> None:
    """Apply migrations and start the server (prints the admin key on first start)."""
    with handled():
        settings = _settings(host=host, port=port, home=home, auth=False if no_auth else None)
        if not settings.auth and not _is_loopback(settings.host):
            fail(
                f"refusing to serve {settings.host} without auth: anyone on the network could "
                "upload and run models. Drop --no-auth (or MODELWORKS_AUTH=false), "
                "or bind 127.0.0.1.",
                code=2,
            )
        import uvicorn

        from modelworks.api.app import create_app
        from modelworks.api.services import Services
        from modelworks.db import upgrade

        settings.home.mkdir(parents=True, exist_ok=True)
        upgrade(settings.resolved_database_url)
        services = Services.build(settings)
        if settings.auth:
            secret = services.keys.bootstrap_admin()
            if secret:
                err.print(
                    "[bold green]Admin API key[/] (shown once; store it now):", highlight=False
                )
                print(secret, flush=True)
                err.print(f"  export MODELWORKS_API_KEY={secret}", highlight=False)
        else:
            err.print("[yellow]auth is off:[/] every caller on this machine may do everything")
        if demo:
            from modelworks.demo import DEMO_MODEL, ensure_demo

            if ensure_demo(services):
                err.print(f"registered the demo model [bold]{DEMO_MODEL}[/]")
            from modelworks.demo import EMBED_MODEL, ensure_minilm

            def announce() -> None:
                err.print(
                    f"registering [bold]{EMBED_MODEL}[/] (all-MiniLM-L6-v2) and exporting it "
                    "to ONNX, once (about 15 s)…"
                )

            if ensure_minilm(services, on_export=announce):
                err.print(f"registered the demo model [bold]{EMBED_MODEL}[/]")
        uvicorn.run(
            create_app(settings, services),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=False,
            server_header=False,
        )


@db_app.command("upgrade")
def db_upgrade(
    home: Annotated[Path | None, typer.Option(help="Data home [default: ~/.modelworks].")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Database URL (overrides the setting).")
    ] = None,
) -> None:
    """Apply database migrations up to the newest."""
    with handled():
        from modelworks.db import current_revision, upgrade

        settings = _settings(home=home, database_url=database_url)
        upgrade(settings.resolved_database_url)
        out.print(f"database at revision {current_revision(settings.resolved_database_url)}")


@app.command("store-key")
def store_key(
    path: Annotated[Path, typer.Argument(help="Where to write the new key (must not exist).")],
) -> None:
    """Write a new random 32-byte key for encrypting artifacts at rest (mode 0600); point
    MODELWORKS_ENCRYPTION_KEY_FILE at it before the first upload, and back it up: without it
    the artifacts cannot be read."""
    from modelworks.crypto import new_key_file

    try:
        new_key_file(path)
    except FileExistsError:
        fail(f"{path} already exists; keys are never overwritten")
    err.print(f"wrote a new key to {path}; set MODELWORKS_ENCRYPTION_KEY_FILE={path}")


@app.command()
def version() -> None:
    """Print the Modelworks version."""
    out.print(__version__)


# models ----------------------------------------------------------------------------------
def _models_table(rows: list[dict[str, Any]]) -> Table:
    t = Table("name", "task", "latest", "aliases", "description")
    for m in rows:
        aliases = ", ".join(f"{a}→{v}" for a, v in sorted(m["aliases"].items()))
        t.add_row(
            m["name"], m["task"], str(m["latest_version"] or "-"), aliases, m["description"][:60]
        )
    return t


@models_app.command("list")
def models_list(url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List the project's models."""
    with handled():
        rows = client(url, api_key).list_models()
        emit_json(rows) if as_json else out.print(_models_table(rows))


def _parse_tags(tags: list[str]) -> dict[str, str]:
    parsed = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"tag {t!r} must look like key=value", param_hint="--tag")
        parsed[key] = value
    return parsed


@models_app.command("create")
def models_create(
    name: str,
    task: Annotated[
        str, typer.Option(help="tensor, tabular-classification, embeddings, …")
    ] = "tensor",
    description: Annotated[str, typer.Option()] = "",
    tag: Annotated[list[str] | None, typer.Option(help="key=value; repeat for more.")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an empty model."""
    tags = _parse_tags(tag or [])
    with handled():
        m = client(url, api_key).create_model(name, task=task, description=description, tags=tags)
        emit_json(m) if as_json else out.print(f"created model [bold]{m['name']}[/] ({m['task']})")


@models_app.command("show")
def models_show(
    name: str, url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show a model with its versions and aliases."""
    with handled():
        m = client(url, api_key).get_model(name)
        if as_json:
            emit_json(m)
            return
        out.print(f"[bold]{m['name']}[/] ({m['task']}) {m['description']}")
        t = Table("version", "format", "size", "digest", "aliases", "inputs", "outputs", "created")
        for v in m["version_list"]:
            sig = v["signature"]
            t.add_row(
                str(v["version"]),
                v["format"],
                _size(v["size"]),
                v["digest"][7:19],
                ", ".join(v["aliases"]),
                _tensors(sig.get("inputs", [])),
                _tensors(sig.get("outputs", [])),
                str(v["created_at"])[:19],
            )
        out.print(t)


def _tensors(items: list[dict[str, Any]]) -> str:
    return "\n".join(f"{i['name']} {i['datatype']} {i['shape']}" for i in items)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


@models_app.command("push")
def models_push(
    name: str,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    description: Annotated[str, typer.Option()] = "",
    task: Annotated[
        str, typer.Option(help="Task, when the model is created by this push.")
    ] = "tensor",
    create: Annotated[bool, typer.Option(help="Create the model if it does not exist.")] = True,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a model file as the model's next version (with a progress bar)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from modelworks.errors import NotFound

    with handled():
        c = client(url, api_key)
        try:
            c.get_model(name)
        except NotFound:
            if not create:
                raise
            c.create_model(name, task=task)
            if not as_json:
                err.print(f"created model [bold]{name}[/]")
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
            disable=as_json or not err.is_terminal,
        ) as bar:
            job = bar.add_task(f"uploading {file.name}", total=file.stat().st_size)
            v = c.push(
                name,
                file,
                description=description,
                progress=lambda sent, _total: bar.update(job, completed=sent),
            )
        if as_json:
            emit_json(v)
        else:
            out.print(
                f"pushed [bold]{name}[/] version {v['version']} ({v['format']}, "
                f"{_size(v['size'])}, {v['digest'][:19]}…)"
            )


@models_app.command("alias")
def models_alias(
    name: str,
    alias: str,
    version: Annotated[int | None, typer.Argument(help="Version to point the alias at.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point an alias (e.g. production) at a version, or remove it with --delete."""
    if (version is None) == (not delete):
        raise typer.BadParameter("give a VERSION, or --delete to remove the alias")
    with handled():
        c = client(url, api_key)
        if delete:
            r = c.delete_alias(name, alias)
            emit_json(r) if as_json else out.print(f"removed alias {name}:{alias}")
        else:
            assert version is not None
            r = c.set_alias(name, alias, version)
            emit_json(r) if as_json else out.print(f"{name}:{alias} → version {r['version']}")


@models_app.command("delete")
def models_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a model with all its versions and aliases."""
    if not yes and not typer.confirm(f"delete model {name!r} and all its versions?"):
        raise typer.Exit(1)
    with handled():
        r = client(url, api_key).delete_model(name)
        emit_json(r) if as_json else out.print(f"deleted model {name}")


# keys ------------------------------------------------------------------------------------
def _quota(requests: int | None, items: int | None, tokens: int | None) -> dict[str, int] | None:
    quota = {
        k: v
        for k, v in {"requests": requests, "items": items, "tokens": tokens}.items()
        if v is not None
    }
    return quota or None


QuotaRequests = Annotated[
    int | None, typer.Option("--quota-requests", min=0, help="Inference requests per UTC day.")
]
QuotaItems = Annotated[
    int | None, typer.Option("--quota-items", min=0, help="Rows, sentences or images per UTC day.")
]
QuotaTokens = Annotated[
    int | None, typer.Option("--quota-tokens", min=0, help="Tokens per UTC day.")
]
RateLimit = Annotated[
    float | None, typer.Option("--rate-limit", min=0.001, help="Requests per second.")
]
Burst = Annotated[
    int | None, typer.Option("--burst", min=1, help="Requests at once above the rate.")
]


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
            quota=_quota(quota_requests, quota_items, quota_tokens),
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

        settings = _settings(home=home, database_url=database_url)
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


@keys_app.command("list")
def keys_list(url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List API keys (prefixes only; secrets are never shown again)."""
    with handled():
        rows = client(url, api_key).list_keys()
        if as_json:
            emit_json(rows)
            return
        t = Table("id", "prefix", "name", "role", "project", "created", "expires", "revoked")
        for k in rows:
            t.add_row(
                str(k["id"]),
                k["prefix"] + "…",
                k["name"],
                k["role"],
                k["project"],
                str(k["created_at"])[:19],
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


@app.command()
def convert(
    model_file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="A scikit-learn model saved with joblib or pickle.",
        ),
    ],
    destination: Annotated[
        Path, typer.Argument(metavar="OUT", help="Where to write the ONNX file.")
    ],
    features: Annotated[
        int, typer.Option("--features", "-f", min=1, help="Number of input columns.")
    ],
    input_name: Annotated[str, typer.Option(help="Name of the ONNX input.")] = "input",
    as_json: JsonOpt = False,
) -> None:
    """Convert a scikit-learn model to ONNX on this machine (it unpickles the file: only
    convert files you trust), then upload the ONNX with `modelworks models push`."""
    from modelworks.convert import load_sklearn, sklearn_to_onnx

    try:
        model = load_sklearn(model_file)
    except RuntimeError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"could not load {model_file.name} as a scikit-learn model ({type(exc).__name__})")
    try:
        info = sklearn_to_onnx(model, features, destination, input_name=input_name)
    except RuntimeError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"skl2onnx could not convert this model ({type(exc).__name__}: {exc})")
    if as_json:
        emit_json({"out": str(destination), **info})
    else:
        out.print(f"wrote {destination}: inputs {info['inputs']}, outputs {info['outputs']}")


# projects, usage, audit --------------------------------------------------------------------
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
    """Create a project (admin keys), with default limits for its keys."""
    with handled():
        p = client(url, api_key).create_project(
            name,
            description=description,
            rate_limit=rate_limit,
            burst=burst,
            quota=_quota(quota_requests, quota_items, quota_tokens),
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
    """Change a project's description or the default limits of its keys."""
    changes: dict[str, Any] = {
        k: v
        for k, v in {"description": description, "rate_limit": rate_limit, "burst": burst}.items()
        if v is not None
    }
    quota = _quota(quota_requests, quota_items, quota_tokens)
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


@app.command()
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


@app.command()
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


# inference -------------------------------------------------------------------------------
@app.command()
def infer(
    model: Annotated[str, typer.Argument(help="name, name:alias or name:VERSION")],
    input: Annotated[
        list[str],
        typer.Option("--input", "-i", help="NAME=JSON, e.g. x='[[1,2]]'; repeat per input."),
    ],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Call a model over the Open Inference Protocol and print its outputs."""
    feeds: dict[str, Any] = {}
    for item in input:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} must look like NAME=JSON", param_hint="--input")
        try:
            feeds[key] = json.loads(raw)
        except ValueError:
            raise typer.BadParameter(
                f"the value of {key!r} is not valid JSON", param_hint="--input"
            ) from None
    with handled():
        result = client(url, api_key).infer(model, feeds)
        plain = {k: v.tolist() for k, v in result.items()}
        if as_json:
            emit_json(plain)
        else:
            t = Table("output", "shape", "values")
            for k, v in result.items():
                t.add_row(k, str(list(v.shape)), json.dumps(plain[k])[:200])
            out.print(t)


def main(argv: list[str] | None = None) -> Callable[..., Any] | None:
    app(args=argv)
    return None
