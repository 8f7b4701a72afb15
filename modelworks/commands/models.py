"""`modelworks models …`: create, list, show, push (with a progress bar), alias, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modelworks.commands.common import (
    JsonOpt,
    KeyOpt,
    UrlOpt,
    client,
    emit_json,
    err,
    handled,
    out,
)

models_app = typer.Typer(help="Models, versions and aliases.", no_args_is_help=True)


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
