"""`modelworks worker`, and the worker processes `modelworks serve` keeps beside itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from modelworks.commands.common import err, handled
from modelworks.commands.settings import settings_from
from modelworks.quiet import confine

STOP_GRACE_S = 10.0


def worker(
    home: Annotated[Path | None, typer.Option(help="Data home [default: ~/.modelworks].")] = None,
    name: Annotated[
        str | None, typer.Option(help="Worker name in job records [default: host:pid:random].")
    ] = None,
    parent_pid: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run jobs (ONNX exports, training, compression) from the registry database until stopped.

    Run it on any machine that shares the database and the store with the server; a job's
    heavy work runs in a child process."""
    with handled():
        settings = settings_from(home=home)
        confine(settings.home)
        from modelworks import memory
        from modelworks.jobs.worker import Worker, build_context

        memory.lift()  # started by `serve`: its data ceiling is not ours
        w = Worker(build_context(settings), name=name, parent_pid=parent_pid)

        def stop(_sig: int, _frame: FrameType | None) -> None:
            w.stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        err.print(f"worker [bold]{w.name}[/] waiting for jobs (Ctrl+C stops it)")
        w.run()


def start_workers(settings: Any, count: int) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes on `settings`' database and store; they end with this one."""
    env = {
        **os.environ,
        "MODELWORKS_HOME": str(settings.home),
        "MODELWORKS_DATABASE_URL": settings.resolved_database_url,
        "MODELWORKS_STORE_URL": settings.resolved_store_url,
    }
    argv = [sys.executable, "-m", "modelworks", "worker", "--parent-pid", str(os.getpid())]
    return [
        subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """Ask each worker to stop (a running job goes back to the queue), then make sure."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
