"""`modelworks train RECIPE --dataset … --model …`: submit a training job, and with `--follow`
watch it to its end (a progress bar with the latest metrics)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from modelworks.commands.common import JsonOpt, KeyOpt, UrlOpt, client, emit_json, handled, out
from modelworks.commands.jobs import follow


def _value(text: str) -> Any:
    """A parameter's value: JSON when it parses (3, 0.001, true, [64, 32]), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str], option: str, parse: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} must look like key=value", param_hint=option)
        found[key] = _value(value) if parse else value
    return found


def train(
    recipe: Annotated[str, typer.Argument(help="tabular-classification or tabular-regression.")],
    dataset: Annotated[str, typer.Option(help="NAME or NAME:VERSION of a dataset.")],
    model: Annotated[str, typer.Option(help="Register the result as a version of this model.")],
    target: Annotated[
        str | None, typer.Option(help="The column to predict (default: the dataset's label).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Data-parallel ranks (DDP).")] = 1,
    param: Annotated[
        list[str] | None,
        typer.Option(help="A recipe parameter, key=value (repeat): epochs=20, hidden=[64,32]."),
    ] = None,
    promote_to: Annotated[
        str | None, typer.Option(help="Move this alias to the new version (see --promote-if).")
    ] = None,
    promote_if: Annotated[
        list[str] | None,
        typer.Option(help="Only when a test metric holds, metric=CONDITION: accuracy='>=0.9'."),
    ] = None,
    follow_job: Annotated[
        bool, typer.Option("--follow", help="Watch the job until it ends.")
    ] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on a dataset as a background job; prints the job (its id to follow)."""
    with handled():
        c = client(url, api_key)
        job = c.train(
            recipe,
            dataset=dataset,
            model=model,
            target=target,
            params=_pairs(param or [], "--param", parse=True),
            workers=workers,
            promote_to=promote_to,
            promote_if=_pairs(promote_if or [], "--promote-if", parse=False),
        )
        if not follow_job:
            if as_json:
                emit_json(job)
            else:
                out.print(
                    f"job {job['id']} queued: {recipe} on {dataset} -> {model}; watch it with "
                    f"`modelworks jobs follow {job['id']}`"
                )
            return
        if not as_json:
            out.print(f"job {job['id']} queued: {recipe} on {dataset} -> {model}")
        follow(c, int(job["id"]), as_json)
