"""Registry operations on models, versions and aliases, one transaction each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from modelworks.db.tables import Alias, DatasetVersion, Model, ModelVersion, Project
from modelworks.errors import Conflict, NotFound, ValidationFailed
from modelworks.names import AliasName, ModelName, VersionNumber, parse_selector
from modelworks.store import ArtifactStore, Blob

DEFAULT_ALIAS = "production"
TASKS = (
    "tensor",
    "tabular-classification",
    "tabular-regression",
    "text-classification",
    "embeddings",
    "image-classification",
    "sequence-classification",
    "sequence-regression",
)


def parse_model_ref(ref: str) -> tuple[ModelName, str | None]:
    """`name`, `name:alias` or `name:3` -> (name, alias-or-version or None)."""
    name, sep, selector = ref.partition(":")
    if sep and not selector:
        raise ValidationFailed(f"model reference {ref!r} has an empty version or alias after ':'")
    return ModelName(name), (selector or None)


SERVING_LIMITS = {"max_batch_size": (1, 4096), "max_delay_ms": (0, 1000)}


def check_serving(options: dict[str, Any]) -> dict[str, Any]:
    """Per-model serving options: `max_batch_size` (1-4096) and `max_delay_ms` (0-1000)."""
    clean: dict[str, Any] = {}
    for key, value in options.items():
        if key not in SERVING_LIMITS:
            raise ValidationFailed(
                f"unknown serving option {key!r}; use {', '.join(SERVING_LIMITS)}"
            )
        low, high = SERVING_LIMITS[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ValidationFailed(f"serving option {key!r} must be a number from {low} to {high}")
        clean[key] = int(value) if key == "max_batch_size" else float(value)
    return clean


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValidationFailed(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
    return task


class Registry:
    def __init__(self, sessions: sessionmaker[Session], store: ArtifactStore) -> None:
        self.sessions = sessions
        self.store = store
        # called with (project_id, model name) after a change that may alter what serves it
        self.listeners: list[Callable[[int, str], None]] = []

    def _changed(self, project_id: int, name: str) -> None:
        for listener in self.listeners:
            listener(project_id, name)

    def notify(self, project_id: int, name: str) -> None:
        """Tell this process's listeners that a model changed elsewhere (e.g. by a job)."""
        self._changed(project_id, name)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.sessions.begin() as s:
            yield s

    # projects ---------------------------------------------------------------------------
    def project_id(self, name: str) -> int:
        with self.sessions() as s:
            pid = s.scalar(select(Project.id).where(Project.name == name))
        if pid is None:
            raise NotFound(f"project {name!r} not found")
        return pid

    # models -----------------------------------------------------------------------------
    @staticmethod
    def _model(s: Session, project_id: int, name: str, *, load: bool = False) -> Model:
        q = select(Model).where(Model.project_id == project_id, Model.name == name)
        if load:
            q = q.options(
                selectinload(Model.versions), selectinload(Model.aliases).joinedload(Alias.target)
            )
        m = s.scalar(q)
        if m is None:
            raise NotFound(
                f"model {name!r} not found; list models with `modelworks models list`",
                details={"model": name},
            )
        return m

    def create_model(
        self,
        project_id: int,
        name: str,
        *,
        task: str = "tensor",
        description: str = "",
        tags: dict[str, Any] | None = None,
        created_by: str = "",
    ) -> Model:
        name = ModelName(name)
        check_task(task)
        try:
            with self._tx() as s:
                m = Model(
                    project_id=project_id,
                    name=name,
                    task=task,
                    description=description,
                    tags=tags or {},
                    created_by=created_by,
                )
                s.add(m)
                s.flush()
        except IntegrityError:
            raise Conflict(
                f"model {name!r} already exists; push a new version with "
                f"`modelworks models push {name} FILE`",
                details={"model": name},
            ) from None
        return self.get_model(project_id, name)

    def list_models(self, project_id: int) -> list[Model]:
        with self.sessions() as s:
            q = (
                select(Model)
                .where(Model.project_id == project_id)
                .options(
                    selectinload(Model.versions),
                    selectinload(Model.aliases).joinedload(Alias.target),
                )
                .order_by(Model.name)
            )
            return list(s.scalars(q))

    def get_model(self, project_id: int, name: str) -> Model:
        with self.sessions() as s:
            return self._model(s, project_id, ModelName(name), load=True)

    def update_model(self, project_id: int, name: str, changes: dict[str, Any]) -> Model:
        if "task" in changes and changes["task"] is not None:
            check_task(changes["task"])
        if changes.get("serving") is not None:
            changes["serving"] = check_serving(changes["serving"])
        with self._tx() as s:
            m = self._model(s, project_id, ModelName(name))
            for key in ("description", "tags", "task", "serving"):
                if changes.get(key) is not None:
                    setattr(m, key, changes[key])
        self._changed(project_id, name)
        return self.get_model(project_id, name)

    def delete_model(self, project_id: int, name: str) -> list[str]:
        """Delete a model with its versions and aliases; returns blobs no longer referenced."""
        with self._tx() as s:
            m = self._model(s, project_id, ModelName(name), load=True)
            digests = {v.digest for v in m.versions}
            digests |= {a["digest"] for v in m.versions for a in (v.artifacts or {}).values()}
            s.delete(m)
        self._changed(project_id, name)
        return self._collect(digests)

    def _collect(self, digests: set[str]) -> list[str]:
        return self.collect(digests)

    def collect(self, digests: set[str]) -> list[str]:
        """Delete the blobs of `digests` that no model version, derived artifact or dataset
        version uses any more; returns those deleted."""
        freed = []
        with self.sessions() as s:
            for d in sorted(digests):
                used = s.scalar(select(func.count()).where(ModelVersion.digest == d))
                used = used or s.scalar(select(func.count()).where(DatasetVersion.digest == d))
                if used == 0 and not self._used_as_artifact(s, d):
                    self.store.delete(d)
                    freed.append(d)
        return freed

    # versions ---------------------------------------------------------------------------
    def add_version(
        self,
        project_id: int,
        name: str,
        blob: Blob,
        *,
        format: str,
        signature: dict[str, Any],
        description: str = "",
        created_by: str = "",
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        status: str = "ready",
        then: Callable[[Session, ModelVersion], None] | None = None,
    ) -> ModelVersion:
        """Register a stored blob as the model's next version (numbers never collide);
        `then` runs in the same transaction (e.g. queueing the version's export job)."""
        for _attempt in range(20):
            try:
                with self._tx() as s:
                    m = self._model(s, project_id, ModelName(name))
                    last = s.scalar(
                        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == m.id)
                    )
                    v = ModelVersion(
                        model_id=m.id,
                        version=(last or 0) + 1,
                        format=format,
                        digest=blob.digest,
                        size=blob.size,
                        signature=signature,
                        description=description,
                        created_by=created_by,
                        metrics=metrics or {},
                        lineage=lineage or {},
                        status=status,
                    )
                    s.add(v)
                    s.flush()
                    if then is not None:
                        then(s, v)
                    s.expunge(v)
                self._changed(project_id, name)
                return v
            except IntegrityError:
                continue  # another upload took this number: take the next one
            except NotFound:
                self._collect({blob.digest})
                raise
        self._collect({blob.digest})
        raise Conflict("too many concurrent uploads to this model; retry the upload")

    def list_versions(self, project_id: int, name: str) -> list[ModelVersion]:
        return self.get_model(project_id, name).versions

    def get_version(self, project_id: int, name: str, version: int) -> ModelVersion:
        with self.sessions() as s:
            m = self._model(s, project_id, ModelName(name))
            v = s.scalar(
                select(ModelVersion).where(
                    ModelVersion.model_id == m.id, ModelVersion.version == version
                )
            )
            if v is None:
                raise NotFound(
                    f"model {name!r} has no version {version}; list them with "
                    f"`modelworks models show {name}`",
                    details={"model": name, "version": version},
                )
            return v

    def resolve(
        self, project_id: int, name: str, selector: str | None = None
    ) -> tuple[Model, ModelVersion]:
        """Which version serves `name[:selector]`.

        No selector: the `production` alias if set, else the latest version.
        A version number: that version. An alias name: that alias. Anything else: 404.
        """
        model = ModelName(name)
        wanted = None if selector is None else parse_selector(model, selector)
        with self.sessions() as s:
            m = self._model(s, project_id, model)
            if isinstance(wanted, VersionNumber):
                v = s.scalar(
                    select(ModelVersion).where(
                        ModelVersion.model_id == m.id, ModelVersion.version == int(wanted)
                    )
                )
                if v is None:
                    raise NotFound(
                        f"model {name!r} has no version {selector}",
                        details={"model": name, "version": selector},
                    )
                return m, v
            alias_name = str(wanted) if wanted is not None else DEFAULT_ALIAS
            v = s.scalar(
                select(ModelVersion)
                .join(Alias, Alias.version_id == ModelVersion.id)
                .where(Alias.model_id == m.id, Alias.name == alias_name)
            )
            if v is not None:
                return m, v
            if selector is not None:
                raise NotFound(
                    f"model {name!r} has no alias {selector!r}; set one with "
                    f"`modelworks models alias {name} {selector} VERSION`",
                    details={"model": name, "alias": selector},
                )
            v = s.scalar(
                select(ModelVersion)
                .where(ModelVersion.model_id == m.id)
                .order_by(ModelVersion.version.desc())
                .limit(1)
            )
            if v is None:
                raise NotFound(
                    f"model {name!r} has no versions yet; upload one with "
                    f"`modelworks models push {name} model.onnx`",
                    details={"model": name},
                )
            return m, v

    # aliases ----------------------------------------------------------------------------
    def set_alias(self, project_id: int, name: str, alias: str, version: int) -> Alias:
        alias = AliasName(alias)
        for _attempt in range(5):
            try:
                with self._tx() as s:
                    m = self._model(s, project_id, ModelName(name))
                    v = s.scalar(
                        select(ModelVersion).where(
                            ModelVersion.model_id == m.id, ModelVersion.version == version
                        )
                    )
                    if v is None:
                        raise NotFound(
                            f"model {name!r} has no version {version}; list them with "
                            f"`modelworks models show {name}`",
                            details={"model": name, "version": version},
                        )
                    a = s.scalar(select(Alias).where(Alias.model_id == m.id, Alias.name == alias))
                    if a is None:
                        a = Alias(model_id=m.id, name=alias, version_id=v.id)
                        s.add(a)
                    else:
                        a.version_id = v.id
                    s.flush()
                    s.refresh(a, ["target"])
                    s.expunge_all()
                self._changed(project_id, name)
                return a
            except IntegrityError:
                continue
        raise Conflict(f"alias {alias!r} is being changed concurrently; retry")

    def delete_alias(self, project_id: int, name: str, alias: str) -> None:
        alias = AliasName(alias)
        with self._tx() as s:
            m = self._model(s, project_id, ModelName(name))
            a = s.scalar(select(Alias).where(Alias.model_id == m.id, Alias.name == alias))
            if a is None:
                raise NotFound(
                    f"model {name!r} has no alias {alias!r}",
                    details={"model": name, "alias": alias},
                )
            s.delete(a)
        self._changed(project_id, name)

    def set_version_status(
        self,
        version_id: int,
        status: str,
        reason: str = "",
        artifacts: dict[str, Any] | None = None,
    ) -> None:
        """Record a conversion's outcome (and the artifacts it produced) on a version."""
        with self._tx() as s:
            v = s.get(ModelVersion, version_id)
            if v is None:
                return  # deleted meanwhile; its artifacts are collected below
            v.status = status
            v.status_reason = reason
            if artifacts is not None:
                v.artifacts = {**(v.artifacts or {}), **artifacts}
            m = s.get(Model, v.model_id)
            assert m is not None
            project_id, name = m.project_id, m.name
        self._changed(project_id, name)

    def versions_with_status(self, status: str) -> list[tuple[int, str, str, dict[str, Any]]]:
        """(version id, model task, source digest, signature) of versions in `status`."""
        with self.sessions() as s:
            rows = s.execute(
                select(ModelVersion.id, Model.task, ModelVersion.digest, ModelVersion.signature)
                .join(Model, Model.id == ModelVersion.model_id)
                .where(ModelVersion.status == status)
            )
            return [(r[0], r[1], r[2], r[3] or {}) for r in rows]

    @staticmethod
    def _used_as_artifact(s: Session, digest: str) -> bool:
        # derived artifacts live in a JSON column; few versions have any, so scan those
        rows = s.scalars(select(ModelVersion.artifacts).where(ModelVersion.format != "onnx"))
        return any(a.get("digest") == digest for arts in rows for a in (arts or {}).values())


def register_in(
    s: Session,
    project_id: int,
    name: str,
    blob: Blob,
    *,
    task: str,
    format: str,
    signature: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    artifacts: dict[str, Any] | None = None,
    description: str = "",
    created_by: str = "",
    alias: str | None = None,
) -> ModelVersion:
    """Within `s` (e.g. the transaction that marks a training job succeeded, so there is
    exactly one version per job): create model `name` with `task` if it does not exist, add
    `blob` as its next version, and point `alias` at it when given."""
    name = ModelName(name)
    m = s.scalar(select(Model).where(Model.project_id == project_id, Model.name == name))
    if m is None:
        m = Model(project_id=project_id, name=name, task=check_task(task), created_by=created_by)
        s.add(m)
        s.flush()
    elif m.task != task:
        raise Conflict(
            f"model {name!r} has task {m.task!r}, not {task!r}; register under another name",
            details={"model": name},
        )
    last = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == m.id))
    v = ModelVersion(
        model_id=m.id,
        version=(last or 0) + 1,
        format=format,
        digest=blob.digest,
        size=blob.size,
        signature=signature,
        description=description,
        created_by=created_by,
        metrics=metrics or {},
        lineage=lineage or {},
        artifacts=artifacts or {},
        status="ready",
    )
    s.add(v)
    s.flush()
    if alias is not None:
        a = s.scalar(select(Alias).where(Alias.model_id == m.id, Alias.name == AliasName(alias)))
        if a is None:
            s.add(Alias(model_id=m.id, name=alias, version_id=v.id))
        else:
            a.version_id = v.id
        s.flush()
    return v
