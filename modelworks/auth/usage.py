"""Usage metering per key x model x hour: requests, items, tokens, compute time, errors.

Requests add to an in-memory tally; a background flush folds it into `usage_records` with
one upsert per row (`ON CONFLICT … DO UPDATE SET n = n + excluded.n`), so replicas sharing a
database add up instead of overwriting each other.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from modelworks.db.tables import UsageRecord

log = logging.getLogger("modelworks.usage")
COUNTERS = ("requests", "items", "tokens", "compute_ms", "errors")
GROUPS = ("hour", "day", "key", "model", "version", "project")


@dataclass
class Tally:
    requests: int = 0
    items: int = 0
    tokens: int = 0
    compute_ms: float = 0.0
    errors: int = 0


def hour_of(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0)


class UsageMeter:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._pending: dict[tuple[int, int, str, int, datetime], Tally] = defaultdict(Tally)
        self._lock = threading.Lock()

    def record(
        self,
        *,
        project_id: int,
        key_id: int,
        model: str,
        version: int,
        items: int = 0,
        tokens: int = 0,
        compute_ms: float = 0.0,
        error: bool = False,
    ) -> None:
        key = (project_id, key_id, model, version, hour_of())
        with self._lock:
            t = self._pending[key]
            t.requests += 1
            t.items += items
            t.tokens += tokens
            t.compute_ms += compute_ms
            t.errors += int(error)

    def flush(self) -> int:
        """Write the tally to the database (blocking); returns the rows written."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(Tally)
        if not pending:
            return 0
        try:
            with self.sessions.begin() as s:
                dialect = s.get_bind().dialect.name
                if dialect == "postgresql":
                    from sqlalchemy.dialects.postgresql import insert
                else:
                    from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
                for (project_id, key_id, model, version, hour), t in pending.items():
                    values = {
                        "project_id": project_id,
                        "key_id": key_id,
                        "model": model,
                        "version": version,
                        "hour": hour,
                        **t.__dict__,
                    }
                    stmt = insert(UsageRecord).values(**values)
                    stmt = stmt.on_conflict_do_update(
                        index_elements=["project_id", "key_id", "model", "version", "hour"],
                        set_={c: getattr(UsageRecord, c) + stmt.excluded[c] for c in COUNTERS},
                    )
                    s.execute(stmt)
        except Exception:
            log.exception("could not write usage; keeping it for the next flush")
            with self._lock:
                for k, t in pending.items():
                    mine = self._pending[k]
                    for c in COUNTERS:
                        setattr(mine, c, getattr(mine, c) + getattr(t, c))
            return 0
        return len(pending)

    def query(
        self,
        *,
        project_id: int | None,
        key_id: int | None = None,
        models: frozenset[str] | None = None,
        model: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: tuple[str, ...] = ("hour", "key", "model"),
    ) -> list[dict[str, Any]]:
        """Sums of the counters, grouped by any of hour, day, key, model, version, project."""
        q = select(UsageRecord)
        if project_id is not None:
            q = q.where(UsageRecord.project_id == project_id)
        if key_id is not None:
            q = q.where(UsageRecord.key_id == key_id)
        if model is not None:
            q = q.where(UsageRecord.model == model)
        if models is not None:  # a key limited to some models sees only their usage
            q = q.where(UsageRecord.model.in_(sorted(models)))
        if start is not None:
            q = q.where(UsageRecord.hour >= start)
        if end is not None:
            q = q.where(UsageRecord.hour < end)
        with self.sessions() as s:
            rows = list(s.scalars(q.order_by(UsageRecord.hour)))
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in rows:
            hour = r.hour if r.hour.tzinfo else r.hour.replace(tzinfo=UTC)
            fields = {
                "hour": hour.isoformat(),
                "day": hour.date().isoformat(),
                "key": r.key_id,
                "model": r.model,
                "version": r.version,
                "project": r.project_id,
            }
            group = tuple(fields[g] for g in group_by)
            row = out.setdefault(
                group, {**{g: fields[g] for g in group_by}, **dict.fromkeys(COUNTERS, 0)}
            )
            for c in COUNTERS:
                row[c] += getattr(r, c)
        for row in out.values():
            row["compute_ms"] = round(row["compute_ms"], 3)
        return list(out.values())
