"""What the sync and async clients share: configuration, the calls, and error mapping.

Every endpoint is written once, as a `Call` (method, path, body, how to read the answer);
`Client` runs calls with httpx.Client, `AsyncClient` with httpx.AsyncClient.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from modelworks.errors import (
    CODE_HEADER,
    Conflict,
    InvalidInput,
    ModelworksError,
    ValidationFailed,
    error_from_envelope,
)
from modelworks.errors import ServerUnreachable as ServerUnreachable  # the package exports it

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
UPLOAD_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
Progress = Callable[[int, int], None]


@dataclass
class Call:
    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    files: Any = None
    data: Mapping[str, Any] | None = None
    timeout: httpx.Timeout | None = None
    parse: Callable[[Any], Any] = field(default=lambda body: body)
    # blocking work before sending (zipping a folder): the async client runs it in a thread
    prepare: Callable[[], None] | None = None
    # an error answer's second chance: return a result (or a call's result), or raise
    recover: Callable[[ModelworksError], Any] | None = None
    on_done: Callable[[], None] | None = None

    def answer(self, response: httpx.Response) -> Any:
        try:
            body = raise_for(response)
        except ModelworksError as exc:
            if self.recover is None:
                raise
            return self.recover(exc)
        return self.parse(body)


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


class _ProgressFile:
    """The file to upload, opened by `open()`, reporting bytes read so uploads can show a
    progress bar. A folder is zipped to a temporary file first (see `zip_folder`)."""

    def __init__(self, path: Path, progress: Progress | None) -> None:
        self.path = path
        self.name = f"{path.name}.zip" if path.is_dir() else path.name
        self.progress = progress
        self.total = self.sent = 0
        self._fh: Any = None
        self._zipped: Path | None = None

    def open(self) -> None:
        source = self.path
        if source.is_dir():
            fd, name = tempfile.mkstemp(prefix="modelworks-", suffix=".zip")
            os.close(fd)
            self._zipped = source = Path(name)
            zip_folder(self.path, source)
        self._fh = open(source, "rb")  # noqa: SIM115 - closed by Call.on_done
        self.total = os.fstat(self._fh.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self._fh.read(size)
        self.sent += len(chunk)
        if self.progress is not None:
            self.progress(self.sent, self.total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._fh.seek(offset, whence))

    def tell(self) -> int:
        return int(self._fh.tell())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._zipped is not None:
            self._zipped.unlink(missing_ok=True)


def folder_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, name in the archive) for the regular files under `folder`, hidden ones left out.

    A symlink is followed only when it stays inside the folder: one pointing out of it could
    upload anything the user can read (an SSH key, a whole cache), so it is refused.
    """
    root = folder.resolve()
    found: list[tuple[Path, str]] = []
    for top, dirs, files in os.walk(root):  # never descends into symlinked folders
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for entry in [*dirs, *sorted(f for f in files if not f.startswith("."))]:
            path = Path(top, entry)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    raise ValidationFailed(
                        f"{folder / rel} is a symlink to {target}, outside the folder; "
                        "copy the folder with its links resolved (cp -rL, or "
                        "snapshot_download(local_dir=...)) and push the copy"
                    )
                if not target.is_file():
                    continue  # a folder's files are zipped where they really are
            if entry in files and stat.S_ISREG(os.stat(path).st_mode):
                found.append((path, rel))
    return found


def zip_folder(folder: Path, out: Path) -> Path:
    """Zip a model folder (e.g. a Hugging Face `save_pretrained` folder) file by file."""
    files = folder_files(folder)
    if not files:
        raise ValidationFailed(f"{folder} holds no files to upload")
    # stored, not deflated: weights barely compress and the server unpacks either
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path, rel in files:
            zf.write(path, rel)
    return out


class Endpoints:
    """Each method builds a call; the concrete client executes it (sync or async)."""

    url: str
    _signatures: dict[str, dict[str, Any]]

    def _execute(self, call: Call) -> Any:
        raise NotImplementedError

    # server ------------------------------------------------------------------------------
    def health(self) -> Any:
        """`/readyz`: `{"status": "ok"}` when the server and its database answer."""
        return self._execute(Call("GET", "/readyz"))

    # models ------------------------------------------------------------------------------
    def list_models(self) -> Any:
        """All models of the key's project, with their latest version and aliases."""
        return self._execute(Call("GET", "/api/v1/models"))

    def create_model(
        self,
        name: str,
        *,
        task: str = "tensor",
        description: str = "",
        tags: Mapping[str, str] | None = None,
        exist_ok: bool = False,
    ) -> Any:
        """Create an empty model; push versions into it with `push`.

        With `exist_ok` (as in `os.makedirs`) an existing model of the same task is returned
        as it is, so a script may run twice; one of another task is still a `Conflict`.
        """
        body = {"name": name, "task": task, "description": description, "tags": dict(tags or {})}

        def existing(exc: ModelworksError) -> Any:
            if not (exist_ok and isinstance(exc, Conflict)):
                raise exc

            def same_task(model: dict[str, Any]) -> Any:
                if model["task"] != task:
                    raise Conflict(
                        f"model {name!r} exists with task {model['task']!r}, not {task!r}; "
                        "pick another name, or change its task with update_model",
                        details={"model": name, "task": model["task"]},
                    )
                return model

            return self._execute(Call("GET", f"/api/v1/models/{_seg(name)}", parse=same_task))

        return self._execute(Call("POST", "/api/v1/models", json=body, recover=existing))

    def get_model(self, name: str) -> Any:
        """A model with its versions (`version_list`) and aliases."""
        return self._execute(Call("GET", f"/api/v1/models/{_seg(name)}"))

    def update_model(
        self,
        name: str,
        *,
        task: str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Any:
        """Change a model's task, description or tags (versions are immutable)."""
        body = {
            k: v
            for k, v in {
                "task": task,
                "description": description,
                "tags": dict(tags) if tags is not None else None,
            }.items()
            if v is not None
        }
        return self._execute(Call("PATCH", f"/api/v1/models/{_seg(name)}", json=body))

    def delete_model(self, name: str) -> Any:
        """Delete a model with all its versions and aliases."""
        return self._execute(Call("DELETE", f"/api/v1/models/{_seg(name)}"))

    # versions ----------------------------------------------------------------------------
    def push(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        description: str = "",
        progress: Progress | None = None,
    ) -> Any:
        """Upload a model as the model's next version; returns the version.

        `path` is an ONNX file, a .zip / .tar.gz of a Hugging Face folder, or such a folder
        itself: it is zipped to a temporary file first (regular files; no hidden files, no
        symlinks out of the folder). `progress(sent, total)` follows the upload.
        """
        wrapped = _ProgressFile(Path(path), progress)
        return self._execute(
            Call(
                "POST",
                f"/api/v1/models/{_seg(name)}/versions",
                files={"file": (wrapped.name, wrapped, "application/octet-stream")},
                data={"description": description} if description else None,
                timeout=UPLOAD_TIMEOUT,
                prepare=wrapped.open,
                on_done=wrapped.close,
            )
        )

    def list_versions(self, name: str) -> Any:
        return self._execute(Call("GET", f"/api/v1/models/{_seg(name)}/versions"))

    # training ----------------------------------------------------------------------------
    def train(
        self,
        recipe: str,
        *,
        dataset: str,
        model: str,
        target: str | None = None,
        params: Mapping[str, Any] | None = None,
        workers: int = 1,
        promote_to: str | None = None,
        promote_if: Mapping[str, str] | None = None,
    ) -> Any:
        """Submit a training job; returns the job (follow it with `client.jobs.follow(id)`).

        `dataset` is NAME or NAME:VERSION; the new version registers under `model` (created
        if new); `promote_if` (e.g. `{"accuracy": ">=0.9"}`) decides whether `promote_to`
        moves to it."""
        body: dict[str, Any] = {"kind": "train", "recipe": recipe, "dataset": dataset}
        body.update(model=model, params=dict(params or {}), workers=workers)
        if target is not None:
            body["target"] = target
        if promote_to is not None:
            body["promote_to"] = promote_to
        if promote_if:
            body["promote_if"] = dict(promote_if)
        return self._execute(Call("POST", "/api/v1/jobs", json=body))

    # datasets ----------------------------------------------------------------------------
    def push_dataset(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        label: str | None = None,
        entity: str | None = None,
        time: str | None = None,
        description: str = "",
        progress: Progress | None = None,
    ) -> Any:
        """Upload a data set as the next version of dataset `name` (created on its first
        upload); returns the version with its profile (rows, column types, label, classes).

        `path` is a CSV, Parquet or JSON Lines file, a zip of image folders (one folder per
        class), or such a folder itself (zipped to a temporary file first). `label` names the
        label column (else one named label, target, class or y); `entity` and `time` name a
        time series' machine and time columns."""
        wrapped = _ProgressFile(Path(path), progress)
        fields = {"name": name, "label": label, "entity": entity, "time": time}
        data = {k: v for k, v in fields.items() if v is not None}
        if description:
            data["description"] = description
        return self._execute(
            Call(
                "POST",
                "/api/v1/datasets",
                files={"file": (wrapped.name, wrapped, "application/octet-stream")},
                data=data,
                timeout=UPLOAD_TIMEOUT,
                prepare=wrapped.open,
                on_done=wrapped.close,
            )
        )

    def list_datasets(self) -> Any:
        return self._execute(Call("GET", "/api/v1/datasets"))

    def get_dataset(self, name: str, version: int | None = None) -> Any:
        """The dataset with its versions; with `version`, that version with its profile."""
        path = f"/api/v1/datasets/{_seg(name)}"
        if version is not None:
            path += f"/versions/{int(version)}"
        return self._execute(Call("GET", path))

    def preview_dataset(self, name: str, version: int | None = None, rows: int = 20) -> Any:
        """`{"columns": [...], "rows": [[...], ...]}`: the first rows (of the latest version)."""
        path = f"/api/v1/datasets/{_seg(name)}"
        if version is not None:
            path += f"/versions/{int(version)}"
        return self._execute(Call("GET", f"{path}/preview", params={"rows": rows}))

    def delete_dataset(self, name: str, version: int | None = None) -> Any:
        """Delete a dataset with every version, or only `version`."""
        path = f"/api/v1/datasets/{_seg(name)}"
        if version is not None:
            path += f"/versions/{int(version)}"
        return self._execute(Call("DELETE", path))

    def get_version(self, name: str, version: int) -> Any:
        return self._execute(Call("GET", f"/api/v1/models/{_seg(name)}/versions/{int(version)}"))

    # aliases -----------------------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int) -> Any:
        """Point `alias` at `version` (creates or moves it): how a version is promoted."""
        return self._execute(
            Call(
                "PUT",
                f"/api/v1/models/{_seg(name)}/aliases/{_seg(alias)}",
                json={"version": int(version)},
            )
        )

    def delete_alias(self, name: str, alias: str) -> Any:
        return self._execute(Call("DELETE", f"/api/v1/models/{_seg(name)}/aliases/{_seg(alias)}"))

    # keys --------------------------------------------------------------------------------
    def create_key(
        self,
        *,
        role: str = "developer",
        name: str = "",
        expires_at: str | None = None,
        project: str | None = None,
        models: list[str] | None = None,
        rate_limit: float | None = None,
        burst: int | None = None,
        quota: Mapping[str, int] | None = None,
    ) -> Any:
        """Create an API key; the secret is in the answer's `key` field, shown this once.

        `models` limits the key to those models; `rate_limit` (requests/s) with `burst` and a
        daily `quota` ({"requests", "items", "tokens"}) cap what it may use. Admins may give
        another `project`.
        """
        body: dict[str, Any] = {"role": role, "name": name}
        optional = {
            "expires_at": expires_at,
            "project": project,
            "models": models,
            "rate_limit": rate_limit,
            "burst": burst,
            "quota": dict(quota) if quota is not None else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return self._execute(Call("POST", "/api/v1/keys", json=body))

    def list_keys(self) -> Any:
        return self._execute(Call("GET", "/api/v1/keys"))

    def get_key(self, key_id: int) -> Any:
        """A key with the limits it runs under (`limits`: rate_limit, burst, quota, and
        `sources` saying whether each is the key's own or its project's default)."""
        return self._execute(Call("GET", f"/api/v1/keys/{int(key_id)}"))

    def revoke_key(self, key_id: int) -> Any:
        """Revoke a key; it stops working at once."""
        return self._execute(Call("DELETE", f"/api/v1/keys/{int(key_id)}"))

    # projects ----------------------------------------------------------------------------
    def create_project(
        self,
        name: str,
        *,
        description: str = "",
        rate_limit: float | None = None,
        burst: int | None = None,
        quota: Mapping[str, int] | None = None,
    ) -> Any:
        """Create a project (a tenant; admin keys only), with default limits for its keys."""
        body: dict[str, Any] = {"name": name, "description": description}
        optional = {
            "rate_limit": rate_limit,
            "burst": burst,
            "quota": dict(quota) if quota is not None else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return self._execute(Call("POST", "/api/v1/projects", json=body))

    def list_projects(self) -> Any:
        return self._execute(Call("GET", "/api/v1/projects"))

    def get_project(self, name: str) -> Any:
        return self._execute(Call("GET", f"/api/v1/projects/{_seg(name)}"))

    def update_project(self, name: str, **changes: Any) -> Any:
        """Change `description`, `rate_limit`, `burst` or `quota` of a project."""
        return self._execute(Call("PATCH", f"/api/v1/projects/{_seg(name)}", json=changes))

    def delete_project(self, name: str) -> Any:
        """Delete a project with its models, versions and keys (admin keys only)."""
        return self._execute(Call("DELETE", f"/api/v1/projects/{_seg(name)}"))

    # usage and audit -----------------------------------------------------------------------
    def usage(
        self,
        *,
        project: str | None = None,
        key: int | None = None,
        model: str | None = None,
        start: str | None = None,
        end: str | None = None,
        group_by: str = "hour,key,model",
    ) -> Any:
        """Requests, items, tokens, compute_ms and errors, summed per `group_by` (any of
        hour, day, key, model, version, project)."""
        params = {
            "project": project,
            "key": key,
            "model": model,
            "from": start,
            "to": end,
            "group_by": group_by,
        }
        return self._execute(
            Call("GET", "/api/v1/usage", params={k: v for k, v in params.items() if v is not None})
        )

    def audit(
        self,
        *,
        project: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> Any:
        """Audit events, newest first: management actions and auth failures."""
        params = {"project": project, "action": action, "actor": actor, "limit": limit}
        return self._execute(
            Call("GET", "/api/v1/audit", params={k: v for k, v in params.items() if v is not None})
        )

    # inference ---------------------------------------------------------------------------
    def model_metadata(self, model: str) -> Any:
        """Open Inference Protocol metadata: input and output names, datatypes, shapes."""
        return self._execute(Call("GET", f"/v2/models/{_seg(model)}"))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        outputs: list[str] | None = None,
        signature: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run `model` (`name`, `name:alias` or `name:3`) on named inputs over OIP v2 JSON.

        Inputs may be numpy arrays or nested lists; lists are cast to the datatype the model
        declares (pass `signature` from `model_metadata` to skip that lookup). Returns a dict
        of output name -> numpy array.
        """
        if signature is None:
            if model not in self._signatures:

                def then(md: dict[str, Any]) -> Any:
                    self._signatures[model] = md
                    return self.infer(model, inputs, outputs=outputs, signature=md)

                return self._execute(Call("GET", f"/v2/models/{_seg(model)}", parse=then))
            signature = self._signatures[model]
        body = encode_infer(inputs, outputs, signature)
        return self._execute(
            Call("POST", f"/v2/models/{_seg(model)}/infer", json=body, parse=decode_infer)
        )


def _texts(name: str, arr: Any) -> list[str]:
    """BYTES elements as JSON strings: text only (the server refuses what is not UTF-8)."""
    out = []
    for i, x in enumerate(arr.reshape(-1)):
        try:
            out.append(x.decode() if isinstance(x, bytes) else str(x))
        except UnicodeDecodeError:
            raise InvalidInput(
                f"BYTES element {i} of input {name!r} is not UTF-8 text; models take text: "
                "decode it first, or send base64 text"
            ) from None
    return out


def encode_infer(
    inputs: Mapping[str, Any], outputs: list[str] | None, signature: Mapping[str, Any]
) -> dict[str, Any]:
    import numpy as np

    from modelworks.tensors import NUMPY_TYPES, datatype_of

    declared = {i["name"]: i for i in signature.get("inputs", [])}
    items = []
    for name, value in inputs.items():
        spec = declared.get(name)
        if isinstance(value, np.ndarray):
            arr = value
        elif spec is not None and spec["datatype"] in NUMPY_TYPES:
            arr = np.asarray(value, dtype=NUMPY_TYPES[spec["datatype"]])
        else:
            arr = np.asarray(value)
        datatype = datatype_of(arr)
        data = _texts(name, arr) if datatype == "BYTES" else arr.reshape(-1).tolist()
        items.append({"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data})
    body: dict[str, Any] = {"inputs": items}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return body


def decode_infer(body: Any) -> dict[str, Any]:
    import numpy as np

    from modelworks.tensors import NUMPY_TYPES

    out = {}
    for o in body.get("outputs", []):
        dtype = NUMPY_TYPES.get(o["datatype"], np.float32)
        out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
    return out


def resolve_config(url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = url or os.environ.get("MODELWORKS_URL") or DEFAULT_URL
    api_key = api_key if api_key is not None else os.environ.get("MODELWORKS_API_KEY")
    return url.rstrip("/"), api_key or None


def raise_for(response: httpx.Response) -> Any:
    """The parsed JSON body, or the server's error rebuilt as its exception class: by the
    code in the body or in the `x-error-code` header (the protocol routes' `{"error": "..."}`
    has none), else by the HTTP status (see `modelworks.errors.error_from_envelope`)."""
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise error_from_envelope(response.status_code, body, response.headers.get(CODE_HEADER))
    return body


def unreachable(url: str, exc: Exception) -> ServerUnreachable:
    return ServerUnreachable(
        f"cannot reach the Modelworks server at {url} ({type(exc).__name__}); start it with "
        "`modelworks serve` or point MODELWORKS_URL at it"
    )
