"""Datasets and their versions, one transaction each: a version is a stored blob (the upload,
content-addressed like a model's) and the profile read from it when it arrived."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from modelworks.db.tables import Dataset, DatasetVersion
from modelworks.errors import Conflict, NotFound, ValidationFailed
from modelworks.names import VERSION_RULE, DatasetName, VersionNumber
from modelworks.store import ArtifactStore, Blob


def parse_dataset_ref(ref: str) -> tuple[str, int | None]:
    """`name` (the latest version) or `name:3` -> (name, version or None); 422 if malformed."""
    name, sep, number = ref.partition(":")
    DatasetName(name)
    if not sep:
        return name, None
    if not number:
        raise ValidationFailed(f"dataset reference {ref!r} has an empty version after ':'")
    return name, int(VersionNumber(number))


def dataset_version(name: str, text: str) -> int:
    """A version number in a path: anything else names no version (404)."""
    try:
        return int(VersionNumber(text))
    except ValidationFailed:
        raise NotFound(
            f"dataset {name!r} has no version {text[:40]!r}: write a version as {VERSION_RULE}",
            details={"dataset": name},
        ) from None


class Datasets:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        collect: Callable[[set[str]], list[str]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        # (digests) -> freed digests: deletes blobs no model or dataset version uses
        self.collect = collect

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self.sessions.begin() as s:
            yield s

    @staticmethod
    def _dataset(s: Session, project_id: int, name: str, *, load: bool = False) -> Dataset:
        q = select(Dataset).where(Dataset.project_id == project_id, Dataset.name == name)
        if load:
            q = q.options(selectinload(Dataset.versions))
        d = s.scalar(q)
        if d is None:
            raise NotFound(
                f"dataset {name!r} not found; list them with `modelworks datasets list`",
                details={"dataset": name},
            )
        return d

    def add_version(
        self,
        project_id: int,
        name: str,
        blob: Blob,
        *,
        format: str,
        profile: dict[str, Any],
        filename: str = "",
        description: str = "",
        created_by: str = "",
    ) -> DatasetVersion:
        """Register a stored blob as the dataset's next version, creating the dataset on its
        first upload (numbers never collide)."""
        name = DatasetName(name)
        for _attempt in range(20):
            try:
                with self._tx() as s:
                    d = s.scalar(
                        select(Dataset).where(
                            Dataset.project_id == project_id, Dataset.name == name
                        )
                    )
                    if d is None:
                        d = Dataset(project_id=project_id, name=name, created_by=created_by)
                        s.add(d)
                        s.flush()
                    last = s.scalar(
                        select(func.max(DatasetVersion.version)).where(
                            DatasetVersion.dataset_id == d.id
                        )
                    )
                    v = DatasetVersion(
                        dataset_id=d.id,
                        version=(last or 0) + 1,
                        format=format,
                        digest=blob.digest,
                        size=blob.size,
                        filename=filename[-255:],
                        profile=profile,
                        description=description,
                        created_by=created_by,
                    )
                    s.add(v)
                    s.flush()
                    s.expunge(v)
                return v
            except IntegrityError:
                continue  # another upload took this number (or created the dataset): again
        self._collect({blob.digest})
        raise Conflict("too many concurrent uploads to this dataset; retry the upload")

    def list_datasets(self, project_id: int) -> list[Dataset]:
        with self.sessions() as s:
            return list(
                s.scalars(
                    select(Dataset)
                    .where(Dataset.project_id == project_id)
                    .options(selectinload(Dataset.versions))
                    .order_by(Dataset.name)
                )
            )

    def get(self, project_id: int, name: str) -> Dataset:
        with self.sessions() as s:
            return self._dataset(s, project_id, DatasetName(name), load=True)

    def get_version(self, project_id: int, name: str, version: int | None = None) -> DatasetVersion:
        """A version of the dataset; without a number, its latest."""
        with self.sessions() as s:
            d = self._dataset(s, project_id, DatasetName(name))
            q = select(DatasetVersion).where(DatasetVersion.dataset_id == d.id)
            if version is None:
                q = q.order_by(DatasetVersion.version.desc()).limit(1)
            else:
                q = q.where(DatasetVersion.version == version)
            v = s.scalar(q)
            if v is None:
                shown = "no versions" if version is None else f"no version {version}"
                raise NotFound(
                    f"dataset {name!r} has {shown}; list them with `modelworks datasets show "
                    f"{name}`",
                    details={"dataset": name, "version": version},
                )
            return v

    def resolve(self, project_id: int, ref: str) -> DatasetVersion:
        """`name` or `name:VERSION` of this project (another project's is not found)."""
        name, version = parse_dataset_ref(ref)
        return self.get_version(project_id, name, version)

    def delete(self, project_id: int, name: str) -> list[str]:
        """Delete the dataset and every version; returns the blobs freed."""
        with self._tx() as s:
            d = self._dataset(s, project_id, DatasetName(name), load=True)
            digests = {v.digest for v in d.versions}
            s.delete(d)
        return self._collect(digests)

    def delete_version(self, project_id: int, name: str, version: int) -> list[str]:
        with self._tx() as s:
            d = self._dataset(s, project_id, DatasetName(name))
            v = s.scalar(
                select(DatasetVersion).where(
                    DatasetVersion.dataset_id == d.id,
                    DatasetVersion.version == version,
                )
            )
            if v is None:
                raise NotFound(
                    f"dataset {name!r} has no version {version}",
                    details={"dataset": name, "version": version},
                )
            digest = v.digest
            s.delete(v)
        return self._collect({digest})

    def _collect(self, digests: set[str]) -> list[str]:
        if self.collect is None:
            return []
        return self.collect(digests)
