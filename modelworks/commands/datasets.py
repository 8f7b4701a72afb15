"""`modelworks datasets …`: push (with a progress bar), list, show (the profile, with the
class balance as bars), preview, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from modelworks.commands.common import JsonOpt, KeyOpt, UrlOpt, client, emit_json, err, handled, out

datasets_app = typer.Typer(help="Datasets: upload, profile, preview.", no_args_is_help=True)
BAR_WIDTH = 30
MAX_CLASSES_SHOWN = 20


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@datasets_app.command("push")
def datasets_push(
    name: str,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            readable=True,
            metavar="PATH",
            help="A CSV, Parquet or JSON Lines file, a zip of image folders, or such a folder.",
        ),
    ],
    label: Annotated[
        str | None, typer.Option(help="The label column (default: label, target, class or y).")
    ] = None,
    entity: Annotated[
        str | None, typer.Option(help="Time series: the column naming the machine.")
    ] = None,
    time: Annotated[str | None, typer.Option(help="Time series: the time column.")] = None,
    description: Annotated[str, typer.Option()] = "",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a data set as the dataset's next version; prints its profile."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with handled():
        c = client(url, api_key)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err,
            transient=True,
            disable=as_json or not err.is_terminal,
        ) as bar:
            task = bar.add_task(f"uploading {path.name}{'/' if path.is_dir() else ''}", total=None)
            v = c.push_dataset(
                name,
                path,
                label=label,
                entity=entity,
                time=time,
                description=description,
                progress=lambda sent, total: bar.update(task, completed=sent, total=total),
            )
        if as_json:
            emit_json(v)
            return
        out.print(
            f"pushed dataset [bold]{name}[/] version {v['version']} ({v['format']}, "
            f"{_size(v['size'])}, {v['profile'].get('rows', 0)} rows)"
        )
        _print_profile(v["profile"])


@datasets_app.command("list")
def datasets_list(url: UrlOpt = None, api_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List the project's datasets."""
    with handled():
        rows = client(url, api_key).list_datasets()
        if as_json:
            emit_json(rows)
            return
        if not rows:
            out.print("no datasets yet: upload one with `modelworks datasets push NAME FILE`")
            return
        table = Table(box=None, header_style="bold")
        for col in ("name", "latest", "format", "rows", "label", "size"):
            table.add_column(col, justify="right" if col in ("latest", "rows", "size") else "left")
        for d in rows:
            latest = d["versions"][-1] if d["versions"] else None
            profile = latest["profile"] if latest else {}
            table.add_row(
                Text(d["name"], style="bold"),
                str(d["latest"] or "-"),
                latest["format"] if latest else "-",
                str(profile.get("rows", "-")),
                str(profile.get("label") or "-"),
                _size(latest["size"]) if latest else "-",
            )
        out.print(table)


@datasets_app.command("show")
def datasets_show(
    name: str,
    version: Annotated[int | None, typer.Option(help="A version (default: the latest).")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A dataset version's profile: columns with their types and missing values, and the
    balance of its classes."""
    with handled():
        c = client(url, api_key)
        if version is None:
            d = c.get_dataset(name)
            if not d["versions"]:
                raise typer.BadParameter(f"dataset {name} has no versions")
            v = d["versions"][-1]
        else:
            v = c.get_dataset(name, version)
        if as_json:
            emit_json(v)
            return
        out.print(
            f"[bold]{name}[/] version {v['version']}: {v['format']}, {_size(v['size'])}, "
            f"{v['filename'] or '-'}, {v['digest'][:19]}…"
        )
        _print_profile(v["profile"])


def _print_profile(profile: dict[str, Any]) -> None:
    facts = [f"{profile.get('rows', 0)} rows"]
    for key in ("label", "task", "entity", "time"):
        if profile.get(key):
            facts.append(f"{key} {profile[key]}")
    if profile.get("entities") is not None:
        facts.append(f"{profile['entities']} entities")
    out.print(", ".join(facts))
    columns = profile.get("columns") or []
    if columns:
        table = Table(box=None, header_style="bold")
        for col in ("column", "type", "missing", "distinct", "min", "max"):
            table.add_column(col, justify="left" if col in ("column", "type") else "right")
        for col in columns:
            table.add_row(
                Text(str(col.get("name")), style="bold"),
                str(col.get("type", "")),
                str(col.get("missing", "")),
                str(col.get("distinct", "")),
                _short(col.get("min")),
                _short(col.get("max")),
            )
        out.print(table)
    classes = profile.get("classes") or {}
    if classes:
        out.print(_class_bars(classes))


def _short(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 24 else f"{text[:23]}…"


def _class_bars(classes: dict[str, int]) -> Table:
    """The class balance as bars: a skew shows at a glance."""
    total = sum(classes.values()) or 1
    top = max(classes.values()) or 1
    table = Table(box=None, header_style="bold", title="classes", title_justify="left")
    table.add_column("class")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    shown = sorted(classes.items(), key=lambda kv: -kv[1])[:MAX_CLASSES_SHOWN]
    for label, count in shown:
        bar = "█" * max(1, round(BAR_WIDTH * count / top))
        table.add_row(_short(label), str(count), f"{100 * count / total:.1f}%", Text(bar, "cyan"))
    if len(classes) > MAX_CLASSES_SHOWN:
        table.add_row(f"… {len(classes) - MAX_CLASSES_SHOWN} more", "", "", "")
    return table


@datasets_app.command("preview")
def datasets_preview(
    name: str,
    version: Annotated[int | None, typer.Option(help="A version (default: the latest).")] = None,
    rows: Annotated[int, typer.Option(min=1, max=100, help="How many first rows.")] = 20,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The first rows of a dataset version."""
    with handled():
        found = client(url, api_key).preview_dataset(name, version, rows)
        if as_json:
            emit_json(found)
            return
        table = Table(header_style="bold")
        for col in found["columns"]:
            table.add_column(_short(col), overflow="fold")
        for row in found["rows"]:
            table.add_row(*("" if v is None else _short(v) for v in row))
        out.print(table)


@datasets_app.command("delete")
def datasets_delete(
    name: str,
    version: Annotated[int | None, typer.Option(help="Only this version.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a dataset with every version, or one version."""
    what = f"{name}:{version}" if version is not None else f"{name} and every version of it"
    if not yes and not typer.confirm(f"delete dataset {what}?"):
        raise typer.Exit(1)
    with handled():
        result = client(url, api_key).delete_dataset(name, version)
        if as_json:
            emit_json(result)
        else:
            out.print(f"deleted dataset {result['deleted']}")
