"""API keys: `mw_` + 43 URL-safe characters, shown once, stored as a SHA-256 hash.

Keys carry 256 bits of randomness, so a fast hash is enough (no password stretching needed);
the hash is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelworks.auth.limits import QUOTA_KINDS, Limits, default_burst
from modelworks.cache import RefreshingCache
from modelworks.db.tables import ApiKey, Project
from modelworks.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed

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


CACHE_TTL_S = 5.0  # another replica's revocation reaches this one within this time
REFRESH_S = 1.0  # how long others keep an expired entry while one caller re-checks it


class KeyService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        # sha256(secret) -> principal: keeps the database off the hot path; revocations
        # made through this process drop their entry at once
        self._cache: RefreshingCache[str, Principal] = RefreshingCache(REFRESH_S)

    def forget_cached(self) -> None:
        """Drop every cached key (after a change to projects or limits)."""
        self._cache.clear()

    def cached(self, secret: str) -> Principal | None:
        """The principal for `secret` if it was verified moments ago and is still valid
        (when the entry runs out, one caller re-checks the database: `RefreshingCache`)."""
        p = self._cache.get(hash_secret(secret))
        if p is None or (p.expires_at is not None and p.expires_at <= datetime.now(UTC)):
            return None
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

    def list(self, project_id: int | None = None) -> list[ApiKey]:
        with self.sessions() as s:
            q = select(ApiKey).order_by(ApiKey.id)
            if project_id is not None:
                q = q.where(ApiKey.project_id == project_id)
            return list(s.scalars(q))

    def get(self, key_id: int, project_id: int | None = None) -> tuple[ApiKey, Project]:
        """A key with its project (`project_id` given: only a key of that project)."""
        with self.sessions() as s:
            key = s.get(ApiKey, key_id)
            project = s.get(Project, key.project_id) if key is not None else None
        if key is None or project is None or project_id not in (None, key.project_id):
            raise NotFound(f"key {key_id} not found; list keys with `modelworks keys list`")
        return key, project

    def revoke(self, key_id: int, project_id: int | None = None) -> ApiKey:
        with self.sessions.begin() as s:
            q = select(ApiKey).where(ApiKey.id == key_id)
            if project_id is not None:
                q = q.where(ApiKey.project_id == project_id)
            key = s.scalar(q)
            if key is None:
                raise NotFound(f"key {key_id} not found; list keys with `modelworks keys list`")
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
        with self.sessions() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.prefix == secret[:PREFIX_LEN]))
            project = s.get(Project, key.project_id) if key is not None else None
        # compare even when no key matched, so timing does not tell whether a prefix exists
        expected = key.secret_hash if key is not None else "0" * 64
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
        return principal

    def touch(self, key_id: int) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=datetime.now(UTC))
            )

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


def check_limits(rate_limit: float | None, burst: int | None, quota: dict[str, int] | None) -> None:
    """Rate limits are positive requests/s, bursts and quotas non-negative whole numbers."""
    if rate_limit is not None and not (0 < rate_limit <= 1e6):
        raise ValidationFailed("rate_limit must be a number of requests/s above 0")
    if burst is not None and not (1 <= burst <= 1e6):
        raise ValidationFailed("burst must be a whole number from 1")
    for kind, value in (quota or {}).items():
        if kind not in QUOTA_KINDS:
            raise ValidationFailed(f"unknown quota {kind!r}; use {', '.join(QUOTA_KINDS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationFailed(f"quota {kind!r} must be a whole number from 0")


def effective_limits(key: Any, project: Any) -> tuple[Limits, dict[str, str]]:
    """The limits a key runs under and where each comes from ("key", "project", or "key
    rate" / "project rate" for a burst defaulted from that rate).

    Unset fields fall back to the project's defaults, except the burst of a key that sets its
    own rate: that defaults from the key's rate, so `--rate-limit 5` is not a burst of 40
    because the project allows 40 at its own, higher rate.
    """
    p_rate, p_burst = getattr(project, "rate_limit", None), getattr(project, "burst", None)
    sources: dict[str, str] = {}
    rate, burst = key.rate_limit, key.burst
    if rate is not None:
        sources["rate"] = "key"
    elif p_rate is not None:
        rate, sources["rate"] = p_rate, "project"
    if burst is not None:
        sources["burst"] = "key"
    elif key.rate_limit is not None:
        burst, sources["burst"] = default_burst(key.rate_limit), "key rate"
    elif p_burst is not None:
        burst, sources["burst"] = p_burst, "project"
    elif p_rate is not None:
        burst, sources["burst"] = default_burst(p_rate), "project rate"
    quota: dict[str, int] = {}
    for origin, given in (("project", getattr(project, "quota", None)), ("key", key.quota)):
        for kind, value in (given or {}).items():
            if kind in QUOTA_KINDS and value is not None:
                quota[kind], sources[f"quota.{kind}"] = int(value), origin
    return Limits(rate=rate, burst=burst, quota=quota), sources


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
