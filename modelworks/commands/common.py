"""What every command shares: consoles, the common options, one-line errors, SDK clients."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from modelworks.errors import ModelworksError

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


def quota_of(requests: int | None, items: int | None, tokens: int | None) -> dict[str, int] | None:
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
