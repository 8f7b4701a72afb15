"""The append-only audit log: every management action and every auth failure."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from modelworks.db.tables import AuditEvent

log = logging.getLogger("modelworks.audit")
# actions about one model, whose target is `name` or `name:version-or-alias`
MODEL_ACTIONS = ("model.", "version.", "alias.")


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def record(
        self,
        *,
        action: str,
        outcome: str,
        actor: str = "",
        target: str = "",
        project_id: int | None = None,
        client: str = "",
        request_id: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        try:
            with self.sessions.begin() as s:
                s.add(
                    AuditEvent(
                        action=action,
                        outcome=outcome,
                        actor=actor,
                        target=target[:256],
                        project_id=project_id,
                        client=client[:64],
                        request_id=request_id[:64],
                        details=details or {},
                    )
                )
        except Exception:  # the audit trail must never turn a request into a 500
            log.exception("could not write audit event %s", action)

    def list(
        self,
        project_id: int | None = None,
        *,
        include_unscoped: bool = False,
        action: str | None = None,
        actor: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int = 100,
        models: frozenset[str] | None = None,
        own_prefix: str = "",
    ) -> list[AuditEvent]:
        """Newest first. `models` given (a key's allowlist): only events about those models,
        and the actions of, or on, the key `own_prefix`."""
        with self.sessions() as s:
            q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if project_id is not None:
                cond = AuditEvent.project_id == project_id
                if include_unscoped:
                    cond = or_(cond, AuditEvent.project_id.is_(None))
                q = q.where(cond)
            if action:
                q = q.where(AuditEvent.action == action)
            if actor:
                q = q.where(AuditEvent.actor == actor)
            if start is not None:
                q = q.where(AuditEvent.at >= start)
            if end is not None:
                q = q.where(AuditEvent.at < end)
            if models is not None:
                q = q.where(_about(models, own_prefix))
            return list(s.scalars(q))


def _about(models: frozenset[str], prefix: str) -> ColumnElement[bool]:
    """Events a key limited to `models` may read: model actions on one of them, and what it
    did or had done to it (filtered in the query, so `limit` counts only these)."""
    about_model = and_(
        or_(*(AuditEvent.action.startswith(a, autoescape=True) for a in MODEL_ACTIONS)),
        or_(
            AuditEvent.target.in_(sorted(models)),
            *(AuditEvent.target.startswith(f"{m}:", autoescape=True) for m in sorted(models)),
        ),
    )
    return or_(about_model, AuditEvent.actor == prefix, AuditEvent.target == prefix)
