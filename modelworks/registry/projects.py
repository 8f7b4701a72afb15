"""Projects: the tenants. Every model, version, alias, key, usage row and audit event
belongs to one."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelworks.auth.keys import ceiling, check_limits, limit_value, looser_limits
from modelworks.auth.limits import Limits
from modelworks.db.tables import ApiKey, Model, Project
from modelworks.errors import Conflict, Forbidden, NotFound, ValidationFailed
from modelworks.names import ProjectName

DEFAULT_PROJECT = "default"
# a limit as an admin sets it (a ceiling) -> the column of the owners' default for it
OWNER_COLUMNS = {"rate_limit": "owner_rate_limit", "burst": "owner_burst", "quota": "owner_quota"}


class ProjectService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def create(
        self,
        name: str,
        *,
        description: str = "",
        rate_limit: float | None = None,
        burst: int | None = None,
        quota: dict[str, int] | None = None,
    ) -> Project:
        name = ProjectName(name)
        check_limits(rate_limit, burst, quota)
        try:
            with self.sessions.begin() as s:
                p = Project(
                    name=name,
                    description=description,
                    rate_limit=rate_limit,
                    burst=burst,
                    quota=quota or {},
                )
                s.add(p)
                s.flush()
                s.expunge(p)
                return p
        except IntegrityError:
            raise Conflict(f"project {name!r} already exists") from None

    def list(self, only: int | None = None) -> list[Project]:
        with self.sessions() as s:
            q = select(Project).order_by(Project.name)
            if only is not None:
                q = q.where(Project.id == only)
            return list(s.scalars(q))

    def get(self, name: str, only: int | None = None) -> Project:
        with self.sessions() as s:
            q = select(Project).where(Project.name == ProjectName(name))
            if only is not None:
                q = q.where(Project.id == only)
            p = s.scalar(q)
        if p is None:
            raise NotFound(f"project {name!r} not found", details={"project": name})
        return p

    def update(
        self,
        name: str,
        changes: dict[str, Any],
        only: int | None = None,
        *,
        by_admin: bool = True,
    ) -> Project:
        """Change a project's description or limits. An admin's limits are ceilings, and
        replace what owners set for the same limit; an owner's are its own defaults, which
        may only be tighter than the ceilings (403 naming them). Null clears a limit at that
        level: an owner clearing its default leaves the admin's ceiling in force."""
        check_limits(changes.get("rate_limit"), changes.get("burst"), changes.get("quota"))
        target = self.get(name, only)
        if not by_admin:
            _check_within_ceiling(target, changes)
        with self.sessions.begin() as s:
            p = s.get(Project, target.id)
            assert p is not None
            if "description" in changes:
                p.description = changes["description"]
            for field, owner_field in OWNER_COLUMNS.items():
                if field not in changes:
                    continue
                cleared: dict[str, int] | None = {} if field == "quota" else None
                value = changes[field] if changes[field] is not None else cleared
                if by_admin:
                    setattr(p, field, value)
                    setattr(p, owner_field, cleared)
                else:
                    setattr(p, owner_field, value)
        return self.get(name, only)

    def delete(self, name: str) -> tuple[int, builtins.list[str]]:
        """Delete a project with its keys; returns its id and its models' names (the caller
        deletes those through the registry so their blobs are collected)."""
        if name == DEFAULT_PROJECT:
            raise ValidationFailed("the default project cannot be deleted")
        p = self.get(name)
        with self.sessions() as s:
            models = list(s.scalars(select(Model.name).where(Model.project_id == p.id)))
        return p.id, models

    def finish_delete(self, project_id: int) -> builtins.list[str]:
        """Delete the project and its keys; returns the deleted keys' prefixes."""
        prefixes = []
        with self.sessions.begin() as s:
            for key in s.scalars(select(ApiKey).where(ApiKey.project_id == project_id)):
                prefixes.append(key.prefix)
                s.delete(key)
            p = s.get(Project, project_id)
            if p is not None:
                s.delete(p)
        return prefixes


def _check_within_ceiling(project: Project, changes: dict[str, Any]) -> None:
    """An owner may lower the limits an admin set on its project, never raise them."""
    bound = ceiling(project)
    asked = Limits(
        rate=changes.get("rate_limit"), burst=changes.get("burst"), quota=changes.get("quota") or {}
    )
    for name in looser_limits(asked, bound):
        value = limit_value(asked, name)
        if value is not None:  # null clears the owner's own default: the ceiling stays
            raise Forbidden(
                f"{name} {value:g} is above the {limit_value(bound, name):g} an admin set for "
                f"project {project.name!r}; an owner may only lower it (ask an admin to "
                "raise it)",
                details={"limit": name, "ceiling": limit_value(bound, name)},
            )
