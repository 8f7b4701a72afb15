"""`modelworks models …`: create, list, show, push (with a progress bar), alias, delete."""

from __future__ import annotations

import contextlib
from pathlib import Path
from time import sleep
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.padding import Padding
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

models_app = typer.Typer(help="Models, versions and aliases.", no_args_is_help=True)
POLL_S = 1.0  # how often `push --wait` asks whether a conversion has ended


def _models_view(rows: list[dict[str, Any]]) -> Group:
    """A line per model, its description whole on the next: a name is what the user types
    next, so it is never cut, and the description never squeezed into a sliver."""
    return _listing(
        ("name", "task", "latest", "aliases"),
        [
            [
                Text(m["name"], style="bold"),
                Text(m["task"]),
                Text(str(m["latest_version"] or "-")),
                Text(", ".join(f"{a} → {v}" for a, v in sorted(m["aliases"].items()))),
            ]
            for m in rows
        ],
        [[Text(m["description"])] if m["description"] else [] for m in rows],
        right={2},
        indent=2,
    )


@models_app.command("list")
def models_list(url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List the project's models."""
    with handled():
        rows = client(url, api_key).list_models()
        if as_json:
            emit_json(rows)
        elif not rows:
            out.print("no models yet: create one with `modelworks models create NAME`")
        else:
            out.print(_models_view(rows))


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
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Succeed if the model exists with this task.")
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an empty model."""
    tags = _parse_tags(tag or [])
    with handled():
        m = client(url, api_key).create_model(
            name, task=task, description=description, tags=tags, exist_ok=exist_ok
        )
        emit_json(m) if as_json else out.print(f"created model [bold]{m['name']}[/] ({m['task']})")


@models_app.command("show")
def models_show(
    name: str,
    wide: Annotated[
        bool, typer.Option("--wide", help="Full digests, and inputs and outputs per version.")
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model with its versions (status, digest, description) and aliases."""
    with handled():
        m = client(url, api_key).get_model(name)
        if as_json:
            emit_json(m)
            return
        out.print(Text.assemble((m["name"], "bold"), f" ({m['task']})"))
        if m["description"]:
            out.print(Text(m["description"]))
        if m["aliases"]:
            aliases = ", ".join(f"{a} → {v}" for a, v in sorted(m["aliases"].items()))
            out.print(Text(f"aliases: {aliases}"))
        if not m["version_list"]:
            out.print("no versions yet: upload one with `modelworks models push`")
            return
        out.print()
        out.print(_versions_view(m["version_list"], wide))
        if not wide:
            out.print()
            for versions, sig in _signatures(m["version_list"]):
                out.print(Text(f"{versions}: {sig}"))


_STATUS_STYLE = {"ready": "green", "converting": "yellow", "failed": "bold red"}


def _versions_view(versions: list[dict[str, Any]], wide: bool) -> Group:
    """A line of short columns per version; its failure reason, description and aliases
    follow as whole lines: as table cells they would be cut or squeezed at 80 columns."""
    rows, details = [], []
    for v in versions:
        rows.append(
            [
                Text(str(v["version"])),
                Text(v["status"], style=_STATUS_STYLE.get(v["status"], "")),
                Text(v["format"]),
                Text(_size(v["size"])),
                Text(v["digest"][:19]),  # sha256: and 12 hex digits; --wide, --json: whole
                Text(str(v["created_at"])[:16].replace("T", " ")),
            ]
        )
        lines = [Text(v["status_reason"], style="red")] if v.get("status_reason") else []
        if v.get("load_reason"):  # a failed load, or a served model whose warm-up failed
            style = "yellow" if v.get("load_status") == "ready" else "red"
            lines.append(Text(f"{v['load_status']}: {v['load_reason']}", style=style))
        if v["description"]:
            lines.append(Text(v["description"]))
        if v["aliases"]:
            lines.append(Text(f"aliases: {', '.join(v['aliases'])}", style="cyan"))
        if wide:
            sig = v["signature"]
            lines += [
                Text(v["digest"]),
                Text(f"inputs: {', '.join(_tensor(i) for i in sig.get('inputs', []))}"),
                Text(f"outputs: {', '.join(_tensor(o) for o in sig.get('outputs', []))}"),
            ]
        details.append(lines)
    header = ("version", "status", "format", "size", "digest", "created")
    return _listing(header, rows, details, right={0, 3}, indent=len(header[0]) + 2)


def _listing(
    header: tuple[str, ...],
    rows: list[list[Text]],
    details: list[list[Text]],
    right: set[int],
    indent: int,
) -> Group:
    """Rows of aligned cells, each followed by its detail lines, indented. Every column but
    the last keeps its width; the last wraps when the terminal is narrow."""
    widths = [
        max(len(r[i]) for r in ([Text(h) for h in header], *rows)) for i in range(len(header))
    ]
    parts: list[Any] = [_row(widths, [Text(h, style="bold underline") for h in header], right)]
    for cells, lines in zip(rows, details, strict=True):
        parts.append(_row(widths, cells, right))
        parts += [Padding(line, (0, 0, 0, indent), expand=False) for line in lines]
    return Group(*parts)


def _row(widths: list[int], cells: list[Text], right: set[int]) -> Table:
    grid = Table.grid(padding=(0, 2))
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        grid.add_column(
            min_width=min(width, 10) if last else None,
            width=None if last else width,
            no_wrap=not last,
            justify="right" if i in right else "left",
        )
    grid.add_row(*cells)
    return grid


def _signatures(versions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each distinct signature once, with the versions that have it: most versions of a model
    share one, and a line per signature fits where two more table columns would not."""
    groups: dict[str, list[int]] = {}
    for v in versions:
        sig = v["signature"]
        inputs = ", ".join(_tensor(i) for i in sig.get("inputs", []))
        outputs = ", ".join(_tensor(o) for o in sig.get("outputs", []))
        groups.setdefault(f"{inputs} → {outputs}", []).append(v["version"])
    return [
        (("version " if len(vs) == 1 else "versions ") + ", ".join(map(str, vs)), sig)
        for sig, vs in groups.items()
    ]


def _tensor(item: dict[str, Any]) -> str:
    return f"{item['name']} {item['datatype']} {item['shape']}"


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
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            readable=True,
            metavar="PATH",
            help="An ONNX file, a .zip/.tar.gz of a Hugging Face folder, or the folder itself.",
        ),
    ],
    description: Annotated[str, typer.Option()] = "",
    task: Annotated[
        str, typer.Option(help="Task, when the model is created by this push.")
    ] = "tensor",
    create: Annotated[bool, typer.Option(help="Create the model if it does not exist.")] = True,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Wait while the version converts (a text model's ONNX export)."
        ),
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a model file or folder as the model's next version (with a progress bar).

    A folder is zipped to a temporary file first: its regular files, without hidden ones;
    a symlink pointing out of the folder is refused.
    """
    from modelworks.errors import ModelworksError, NotFound

    with handled():
        c = client(url, api_key)
        created = False
        try:
            c.get_model(name)
        except NotFound:
            if not create:
                raise
            c.create_model(name, task=task)
            created = True
        try:
            v = _upload(c, name, file, description, quiet=as_json)
        except ModelworksError:
            if created:  # a refused upload leaves no empty model behind
                with contextlib.suppress(ModelworksError):
                    c.delete_model(name)
            raise
        if created and not as_json:
            err.print(f"created model [bold]{name}[/]")
        if wait and v["status"] == "converting":
            v = _converted(c, name, v["version"], quiet=as_json)
        if as_json:
            emit_json(v)
        else:
            out.print(
                f"pushed [bold]{name}[/] version {v['version']} ({v['format']}, "
                f"{_size(v['size'])}, {v['digest'][:19]}…)"
            )


def _upload(c: Any, name: str, file: Path, description: str, quiet: bool) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    ) as bar:
        # a folder's total is known once it is zipped: the bar starts when the upload does
        job = bar.add_task(f"uploading {file.name}{'/' if file.is_dir() else ''}", total=None)
        return c.push(
            name,
            file,
            description=description,
            progress=lambda sent, total: bar.update(job, completed=sent, total=total),
        )


def _converted(c: Any, name: str, version: int, quiet: bool) -> Any:
    """Poll the version until its conversion ends; a failed one is an error (exit 1)."""
    show = not quiet and err.is_terminal
    with err.status(f"converting {name}:{version} to ONNX…") if show else contextlib.nullcontext():
        while (v := c.get_version(name, version))["status"] == "converting":
            sleep(POLL_S)
    if v["status"] == "failed":
        fail(f"version {version} of {name} did not convert: {v['status_reason']}")
    return v


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
