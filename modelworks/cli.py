"""The `modelworks` command line. Remote commands talk to the server through the SDK.

Exit codes: 0 done, 1 failed (the message says how to fix it), 2 usage error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modelworks import __version__
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
from modelworks.commands.datasets import datasets_app
from modelworks.commands.jobs import jobs_app
from modelworks.commands.keys import keys_app
from modelworks.commands.models import models_app
from modelworks.commands.projects import audit, csv_cell, projects_app, usage
from modelworks.commands.settings import is_loopback, settings_from
from modelworks.commands.train import train
from modelworks.commands.worker import start_workers, stop_workers, worker
from modelworks.quiet import confine

__all__ = ["app", "csv_cell", "main"]

app = typer.Typer(
    help="Modelworks: register, serve and meter models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(datasets_app, name="datasets")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(projects_app, name="projects")
app.add_typer(jobs_app, name="jobs")
app.command()(usage)
app.command()(audit)
app.command()(worker)
app.command()(train)


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
    job_workers: Annotated[
        int | None,
        typer.Option(
            min=0, max=64, help="Job worker processes to start beside the server [default: 1]."
        ),
    ] = None,
) -> None:
    """Apply migrations and start the server (prints the admin key on first start)."""
    with handled():
        settings = settings_from(host=host, port=port, home=home, auth=False if no_auth else None)
        if job_workers is not None:
            settings = settings.model_copy(update={"job_workers": job_workers})
        if not settings.auth and not is_loopback(settings.host):
            fail(
                f"refusing to serve {settings.host} without auth: anyone on the network could "
                "upload and run models. Drop --no-auth (or MODELWORKS_AUTH=false), "
                "or bind 127.0.0.1.",
                code=2,
            )
        confine(settings.home)  # before anything below imports a runtime
        from modelworks.api.services import Services
        from modelworks.db import upgrade

        settings.home.mkdir(parents=True, exist_ok=True)
        upgrade(settings.resolved_database_url)
        services = Services.build(settings)
        secret = services.keys.bootstrap_admin() if settings.auth else None
        if not settings.auth:
            err.print("[yellow]auth is off:[/] every caller on this machine may do everything")
        announce_key = KeyBanner(secret)
        try:
            _start(settings, services, demo, on_ready=announce_key)
        finally:
            announce_key()  # the start failed: the new key is still the only admin key


def _start(settings: Any, services: Any, demo: bool, on_ready: Callable[[], None]) -> None:
    """Register the demo models if asked, then serve; `on_ready` runs once requests are
    accepted, so what it prints comes after the demo's messages and uvicorn's start-up lines."""
    from modelworks.api.app import create_app
    from modelworks.serving.pool import settle_heap

    if demo:
        from modelworks.demo import DEMO_MODEL, EMBED_MODEL, ensure_demo, ensure_minilm

        if ensure_demo(services):
            err.print(f"registered the demo model [bold]{DEMO_MODEL}[/]")

        def announce() -> None:
            err.print(
                f"registering [bold]{EMBED_MODEL}[/] (all-MiniLM-L6-v2) and exporting it "
                "to ONNX, once (about 15 s)…"
            )

        if ensure_minilm(services, on_export=announce):
            err.print(f"registered the demo model [bold]{EMBED_MODEL}[/]")
    app = create_app(settings, services)
    workers = start_workers(settings, settings.job_workers)
    try:
        services.pool.settle_heap = True
        settle_heap()
        _limit_memory(settings)
        ready_server(server_config(app, settings), on_ready).run()
    finally:
        stop_workers(workers)


def _limit_memory(settings: Any) -> None:
    """The process's data ceiling (modelworks.memory), once everything before serving is held."""
    from modelworks import memory
    from modelworks.runtimes.onnx import providers

    limit = memory.apply(memory.ceiling(settings, cuda="CUDAExecutionProvider" in providers()))
    if limit:
        err.print(
            f"memory ceiling: {limit // memory.MIB} MiB of data for this process ({memory.SETTING})"
        )


def server_config(app: Any, settings: Any) -> Any:
    """uvicorn's configuration for `app`. Forwarded headers (`X-Forwarded-For`) are believed
    only from MODELWORKS_TRUSTED_PROXIES: uvicorn's default believes any local process, which
    would let it pick the address the audit log and the failure throttle see."""
    import uvicorn

    proxies = settings.proxies
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies,
    )


class KeyBanner:
    """Prints the first admin key once: bare on stdout (for scripts), in a panel on stderr."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret

    def __call__(self) -> None:
        secret, self.secret = self.secret, None
        if not secret:
            return
        from rich.panel import Panel
        from rich.text import Text

        print(secret, flush=True)
        body = Text.assemble(
            "Use it in this shell and the next ones with\n\n",
            (f"export MODELWORKS_API_KEY={secret}", "bold"),
            "\n\nIt is shown once and stored only hashed: save it now. Lost it? "
            "`modelworks keys bootstrap` (same MODELWORKS_HOME) mints another.",
        )
        err.print(Panel(body, title="[bold]Admin API key[/]", border_style="green", expand=False))


def ready_server(config: Any, on_ready: Callable[[], None]) -> Any:
    """A uvicorn server that calls `on_ready` once it accepts requests."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                on_ready()

    return Server(config)


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

        settings = settings_from(home=home, database_url=database_url)
        upgrade(settings.resolved_database_url)
        out.print(f"database at revision {current_revision(settings.resolved_database_url)}")


@app.command("store-key")
def store_key(
    path: Annotated[Path, typer.Argument(help="Where to write the new key (must not exist).")],
) -> None:
    """Write a new key for encrypting artifacts at rest.

    The file gets mode 0600. Point MODELWORKS_ENCRYPTION_KEY_FILE at it before the first
    upload, and back it up: without it the artifacts cannot be read.
    """
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
    """Convert a scikit-learn model to ONNX on this machine.

    It unpickles the file, so convert only files you trust; then upload the ONNX with
    `modelworks models push`. The server never loads a pickle.
    """
    with handled():
        confine(settings_from().home)  # skl2onnx may load ONNX Runtime
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
