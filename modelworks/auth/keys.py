"""API keys: `mw_` + 43 URL-safe characters, shown once, stored as a SHA-256 hash.

Keys carry 256 bits of randomness, so a fast hash is enough (no password stretching needed);
the hash is compared in constant time, and an unknown prefix costs the same work as a known
one. A key sees and acts only on keys no wider than itself (`within`).

A key's last use is noted in memory on each request and written within LAST_USED_FLUSH_S,
one UPDATE for every key used meanwhile (and at shutdown): no write on the request path.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, Literal

from sqlalchemy import case, literal, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelworks.auth.limits import MAX_RATE, MIN_RATE, QUOTA_KINDS, Limits, default_burst
from modelworks.cache import RefreshingCache
from modelworks.db.tables import ApiKey, Project
from modelworks.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed

log = logging.getLogger("modelworks.auth")
KEY_PREFIX = "mw_"
PREFIX_LEN = 12  # "mw_" + 9 characters: enough to tell keys apart, useless to an attacker
Role = Literal["admin", "owner", "developer", "viewer", "invoker"]
ROLES: tuple[str, ...] = ("admin", "owner", "developer", "viewer", "invoker")
Permission = Literal["read", "write", "infer", "keys"]
_GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset({"read", "write", "infer", "keys"}),
    "owner": frozenset({"read", "write", "infer", "keys"}),
    "developer": frozenset({"read", "write", "infer"}),
    "viewer": frozenset({"read"}),
    "invoker": frozenset({"infer"}),
}
# admin > owner > developer > viewer, invoker: admin and owner grant the same permissions,
# but only an admin acts beyond its project, so an owner is narrower
_RANK = {"admin": 3, "owner": 2, "developer": 1, "viewer": 0, "invoker": 0}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, prefix, project, role, model allowlist and limits."""

    key_id: int | None
    prefix: str
    project_id: int
    role: str
    models: frozenset[str] | None = None
    limits: Limits = field(default_factory=Limits)
    expires_at: datetime | None = None

    def allows_model(self, name: str) -> bool:
        return self.models is None or name in self.models

    def check_model(self, name: str) -> None:
        """A model outside the key's allowlist looks exactly like a missing one."""
        if not self.allows_model(name):
            raise NotFound(
                f"model {name!r} not found; list models with `modelworks models list`",
                details={"model": name},
            )

    def can(self, permission: str) -> bool:
        return permission in _GRANTS.get(self.role, frozenset())

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise Forbidden(
                f"this key's role {self.role!r} does not allow {permission!r}; "
                "ask a project owner for a key with the right role"
            )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def looks_like_key(secret: str) -> bool:
    return secret.startswith(KEY_PREFIX) and 35 <= len(secret) <= 128


_DUMMY_HASH = hash_secret(KEY_PREFIX + "0" * 43)  # compared against when no prefix matches
CACHE_TTL_S = 5.0  # another replica's revocation reaches this one within this time
REFRESH_S = 1.0  # how long others keep an expired entry while one caller re-checks it
LAST_USED_FLUSH_S = 10.0  # a key's last use reaches the database within this time


class KeyService:
    def __init__(
        self, sessions: sessionmaker[Session], *, flush_s: float = LAST_USED_FLUSH_S
    ) -> None:
        self.sessions = sessions
        # sha256(secret) -> principal: keeps the database off the hot path; revocations
        # made through this process drop their entry at once
        self._cache: RefreshingCache[str, Principal] = RefreshingCache(REFRESH_S)
        self.flush_s = flush_s
        self._uses: dict[int, float] = {}  # key id -> its last use (time.time()), unwritten
        self._uses_lock = threading.Lock()
        self._flusher: threading.Timer | None = None
        self._closed = False

    def forget_cached(self) -> None:
        """Drop every cached key (after a change to projects or limits)."""
        self._cache.clear()

    def cached(self, secret: str) -> Principal | None:
        """The principal for `secret` if it was verified moments ago and is still valid
        (when the entry runs out, one caller re-checks the database: `RefreshingCache`)."""
        p = self._cache.get(hash_secret(secret))
        if p is None or (p.expires_at is not None and p.expires_at <= datetime.now(UTC)):
            return None
        self.note_use(p)
        return p

    def create(
        self,
        *,
        project_id: int,
        role: str,
        name: str = "",
        created_by: str = "",
        expires_at: datetime | None = None,
        models: list[str] | None = None,
        rate_limit: float | None = None,
        burst: int | None = None,
        quota: dict[str, int] | None = None,
    ) -> tuple[ApiKey, str]:
        if role not in ROLES:
            raise ValidationFailed(f"unknown role {role!r}; use one of: {', '.join(ROLES)}")
        check_limits(rate_limit, burst, quota)
        if models is not None:
            from modelworks.names import ModelName

            models = sorted({ModelName(m) for m in models})
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        for _ in range(5):
            secret = new_secret()
            try:
                with self.sessions.begin() as s:
                    key = ApiKey(
                        project_id=project_id,
                        name=name,
                        prefix=secret[:PREFIX_LEN],
                        secret_hash=hash_secret(secret),
                        role=role,
                        created_by=created_by,
                        expires_at=expires_at,
                        models=models,
                        rate_limit=rate_limit,
                        burst=burst,
                        quota=quota or {},
                    )
                    s.add(key)
                    s.flush()
                    s.expunge(key)
                return key, secret
            except IntegrityError:
                continue  # prefix collision: astronomically rare, draw again
        raise Conflict("could not create a unique key; retry")

    def list(self, project_id: int | None = None, caller: Principal | None = None) -> list[ApiKey]:
        """Keys (of one project when `project_id` is given); with a `caller`, only those no
        wider than it."""
        with self.sessions() as s:
            q = select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id)
            if project_id is not None:
                q = q.where(ApiKey.project_id == project_id)
            rows = s.execute(q.order_by(ApiKey.id)).all()
        return [self._used(k) for k, p in rows if caller is None or within(k, p, caller)]

    def get(
        self, key_id: int, project_id: int | None = None, caller: Principal | None = None
    ) -> tuple[ApiKey, Project]:
        """A key with its project (`project_id` given: only a key of that project; `caller`
        given: only a key no wider than it). Any other is as missing as an unknown id."""
        with self.sessions() as s:
            key = s.get(ApiKey, key_id)
            project = s.get(Project, key.project_id) if key is not None else None
        if (
            key is None
            or project is None
            or project_id not in (None, key.project_id)
            or (caller is not None and not within(key, project, caller))
        ):
            raise _no_such_key(key_id)
        return self._used(key), project

    def revoke(
        self, key_id: int, project_id: int | None = None, caller: Principal | None = None
    ) -> ApiKey:
        """Revoke a key, as `get` finds it."""
        self.get(key_id, project_id, caller)
        with self.sessions.begin() as s:
            key = s.get(ApiKey, key_id)
            if key is None:
                raise _no_such_key(key_id)
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
            self._cache.pop(key.secret_hash)
            s.flush()
            s.expunge(key)
            return key

    def authenticate(self, secret: str) -> Principal:
        """Check `secret` against the database and cache the answer; a key that no longer
        passes (revoked, expired) leaves the cache at once."""
        try:
            return self._authenticate(secret)
        except Unauthorized:
            self._cache.pop(hash_secret(secret))
            raise

    def _authenticate(self, secret: str) -> Principal:
        if not looks_like_key(secret):
            raise Unauthorized(
                "malformed API key; keys look like 'mw_…' "
                "(create one with `modelworks keys create`)"
            )
        # one query and one hash-and-compare whether or not the prefix exists, so the time
        # taken does not tell an attacker which prefixes are real
        with self.sessions() as s:
            row = s.execute(
                select(ApiKey, Project)
                .join(Project, Project.id == ApiKey.project_id)
                .where(ApiKey.prefix == secret[:PREFIX_LEN])
            ).first()
        key, project = row if row is not None else (None, None)
        expected = key.secret_hash if key is not None else _DUMMY_HASH
        if not hmac.compare_digest(expected, hash_secret(secret)) or key is None:
            raise Unauthorized("invalid API key")
        now = datetime.now(UTC)
        if key.revoked_at is not None:
            raise Unauthorized("this API key was revoked; ask for a new one")
        if key.expires_at is not None and _aware(key.expires_at) <= now:
            raise Unauthorized("this API key has expired; ask for a new one")
        principal = Principal(
            key_id=key.id,
            prefix=key.prefix,
            project_id=key.project_id,
            role=key.role,
            models=frozenset(key.models) if key.models is not None else None,
            limits=effective_limits(key, project)[0],
            expires_at=_aware(key.expires_at) if key.expires_at is not None else None,
        )
        self._cache.put(key.secret_hash, principal, CACHE_TTL_S)
        self.note_use(principal)
        return principal

    def note_use(self, p: Principal) -> None:
        """Remember that `p`'s key was used now; it is written within `flush_s`."""
        if p.key_id is None:
            return
        now = time.time()
        with self._uses_lock:
            self._uses[p.key_id] = now
            if self._flusher is None and not self._closed:
                self._flusher = threading.Timer(self.flush_s, self._flush_due)
                self._flusher.daemon = True
                self._flusher.start()

    def _flush_due(self) -> None:
        with self._uses_lock:
            self._flusher = None
        self.flush_uses()

    def flush_uses(self) -> int:
        """Write the last use of every key used since the previous flush, in one UPDATE;
        returns how many keys it covered. A failed write is kept for the next flush."""
        with self._uses_lock:
            uses, self._uses = self._uses, {}
        if not uses:
            return 0
        column = ApiKey.__table__.c.last_used_at
        when = {key_id: literal(_from_epoch(t), column.type) for key_id, t in uses.items()}
        try:
            with self.sessions.begin() as s:
                s.execute(
                    update(ApiKey)
                    .where(ApiKey.id.in_(list(when)))
                    .values(last_used_at=case(when, value=ApiKey.id))
                    .execution_options(synchronize_session=False)
                )
        except SQLAlchemyError:
            log.exception("could not record when API keys were last used; retrying later")
            with self._uses_lock:
                for key_id, t in uses.items():
                    self._uses[key_id] = max(t, self._uses.get(key_id, t))
            return 0
        return len(uses)

    def close(self) -> None:
        """Write the uses not written yet (at shutdown); later ones are not scheduled."""
        with self._uses_lock:
            self._closed = True
            flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
        self.flush_uses()

    def _used(self, key: ApiKey) -> ApiKey:
        """`key` with its last use in this process, when that is not written yet."""
        t = self._uses.get(key.id)
        if t is not None:
            used = _from_epoch(t)
            if key.last_used_at is None or _aware(key.last_used_at) < used:
                key.last_used_at = used
        return key

    def bootstrap_admin(self) -> str | None:
        """Create the first admin key when there is no usable admin key; return its secret."""
        with self.sessions() as s:
            exists = s.scalar(
                select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
            )
            default = s.scalar(select(Project.id).where(Project.name == "default"))
        if exists is not None or default is None:
            return None
        _key, secret = self.create(
            project_id=default, role="admin", name="bootstrap admin", created_by="modelworks serve"
        )
        return secret


def _no_such_key(key_id: int) -> NotFound:
    return NotFound(f"key {key_id} not found; list keys with `modelworks keys list`")


def role_within(role: str, own: str) -> bool:
    """Whether `role` is no wider than `own`: no permission `own` lacks, and no higher rank
    (an owner never reaches an admin key, though both may do everything in a project)."""
    if role not in _GRANTS or own not in _GRANTS:
        return False
    return _GRANTS[role] <= _GRANTS[own] and _RANK[role] <= _RANK[own]


def within(key: Any, project: Any, caller: Principal) -> bool:
    """Whether `key` is no wider than `caller`: its role, its model allowlist (none is wider
    than any), its expiry (none outlives every date) and its effective limits."""
    if not role_within(key.role, caller.role):
        return False
    if caller.models is not None and (key.models is None or not set(key.models) <= caller.models):
        return False
    if caller.expires_at is not None and (
        key.expires_at is None or _aware(key.expires_at) > caller.expires_at
    ):
        return False
    return not looser_limits(effective_limits(key, project)[0], caller.limits)


def looser_limits(limits: Limits, bound: Limits) -> list[str]:
    """The limits in which `limits` allows more than `bound` ("rate_limit", "burst",
    "quota.KIND"); a limit that is not set allows everything."""
    looser = []
    if bound.rate is not None:
        if limits.rate is None or limits.rate > bound.rate:
            looser.append("rate_limit")
        if bound.burst is not None and (limits.burst is None or limits.burst > bound.burst):
            looser.append("burst")
    for kind, allowed in bound.quota.items():
        if limits.quota.get(kind) is None or limits.quota[kind] > allowed:
            looser.append(f"quota.{kind}")
    return looser


def bounded_limits(
    parent: Limits,
    project: Any,
    rate_limit: float | None,
    burst: int | None,
    quota: dict[str, int] | None,
) -> tuple[float | None, int | None, dict[str, int]]:
    """The own limits of a key minted by a key running under `parent`: what was asked, which
    may not be looser than `parent` (403 naming its value), and where the key would run
    under more than `parent` (nothing asked, and the project allows more), the parent's."""
    asked = Limits(rate=rate_limit, burst=burst, quota=dict(quota or {}))
    for name in looser_limits(asked, parent):
        value = limit_value(asked, name)
        if value is not None:  # not asked: inherited below
            raise Forbidden(
                f"{name} {value:g} is looser than the {limit_value(parent, name):g} this key runs "
                f"under; a key cannot create a key with looser limits than its own (ask for "
                f"{limit_value(parent, name):g} or less, or leave it out to inherit it)"
            )
    own = SimpleNamespace(rate_limit=rate_limit, burst=burst, quota=dict(quota or {}))
    for name in ("rate_limit", "burst", *(f"quota.{k}" for k in parent.quota)):
        if name in looser_limits(effective_limits(own, project)[0], parent):
            value = limit_value(parent, name)
            if name.startswith("quota."):
                own.quota[name.removeprefix("quota.")] = int(value or 0)
            else:
                setattr(own, name, value)
    return own.rate_limit, own.burst, own.quota


def limit_value(limits: Limits, name: str) -> Any:
    """The value of "rate_limit", "burst" or "quota.KIND" in `limits` (None: not set)."""
    if name == "rate_limit":
        return limits.rate
    if name == "burst":
        return limits.burst
    return limits.quota.get(name.removeprefix("quota."))


def check_limits(rate_limit: float | None, burst: int | None, quota: dict[str, int] | None) -> None:
    """Rate limits are positive requests/s, bursts and quotas non-negative whole numbers."""
    if rate_limit is not None and not (MIN_RATE <= rate_limit <= MAX_RATE):
        raise ValidationFailed(
            f"rate_limit must be a number of requests/s from {MIN_RATE} to {MAX_RATE:g}"
        )
    if burst is not None and not (1 <= burst <= 1e6):
        raise ValidationFailed("burst must be a whole number from 1")
    for kind, value in (quota or {}).items():
        if kind not in QUOTA_KINDS:
            raise ValidationFailed(f"unknown quota {kind!r}; use {', '.join(QUOTA_KINDS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationFailed(f"quota {kind!r} must be a whole number from 0")


Level = tuple[str, Any, Any, Any]  # origin, rate, burst, quota of one level of limits


def effective_limits(key: Any, project: Any) -> tuple[Limits, dict[str, str]]:
    """The limits a key runs under, and where each comes from ("key", "project", or "key
    rate" / "project rate" for a burst defaulted from that rate).

    Each limit is the tightest of three: the key's own, its project's owner-set default and
    the ceiling an admin set on the project. A burst not set at a level defaults from that
    level's rate, so `--rate-limit 5` is not a burst of 40 because the project allows 40.
    """
    owner_default = (
        "project",
        getattr(project, "owner_rate_limit", None),
        getattr(project, "owner_burst", None),
        getattr(project, "owner_quota", None),
    )
    own = ("key", key.rate_limit, key.burst, key.quota)
    return _tightest([own, owner_default, _admin_level(project)])


def ceiling(project: Any) -> Limits:
    """The limits an admin set on a project: its owners may lower them, never raise them."""
    return _tightest([_admin_level(project)])[0]


def _admin_level(project: Any) -> Level:
    return (
        "project",
        getattr(project, "rate_limit", None),
        getattr(project, "burst", None),
        getattr(project, "quota", None),
    )


def _tightest(levels: list[Level]) -> tuple[Limits, dict[str, str]]:
    """The lowest value of each limit over `levels` (on a tie, the first level's source)."""
    rate: float | None = None
    burst: int | None = None
    quota: dict[str, int] = {}
    sources: dict[str, str] = {}
    for origin, l_rate, l_burst, l_quota in levels:
        if l_rate is not None and (rate is None or l_rate < rate):
            rate, sources["rate"] = l_rate, origin
        b, b_origin = _burst_of(origin, l_rate, l_burst)
        if b is not None and (burst is None or b < burst):
            burst, sources["burst"] = b, b_origin
        for kind, value in (l_quota or {}).items():
            if kind in QUOTA_KINDS and value is not None and int(value) < quota.get(kind, 2**63):
                quota[kind], sources[f"quota.{kind}"] = int(value), origin
    return Limits(rate=rate, burst=burst, quota=quota), sources


def _burst_of(origin: str, rate: float | None, burst: int | None) -> tuple[int | None, str]:
    if burst is not None:
        return int(burst), origin
    if rate is not None:
        return default_burst(rate), f"{origin} rate"
    return None, ""


def _from_epoch(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
