"""API keys: `mw_` + 43 URL-safe characters, shown once, stored as a SHA-256 hash.

Keys carry 256 bits of randomness, so a fast hash is enough (no password stretching needed);
the hash is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

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
    """Who is calling: the key's id, prefix, project and role."""

    key_id: int | None
    prefix: str
    project_id: int
    role: str

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


class KeyService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        # sha256(secret) -> (cache expiry, principal, key expiry): keeps the database off the
        # hot path; revocations made through this process drop their entry at once
        self._cache: dict[str, tuple[float, Principal, datetime | None]] = {}

    def cached(self, secret: str) -> Principal | None:
        """The principal for `secret` if it was verified moments ago and is still valid."""
        hit = self._cache.get(hash_secret(secret))
        if hit is None or hit[0] < time.monotonic():
            return None
        if hit[2] is not None and hit[2] <= datetime.now(UTC):
            return None
        return hit[1]

    def create(
        self,
        *,
        project_id: int,
        role: str,
        name: str = "",
        created_by: str = "",
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        if role not in ROLES:
            raise ValidationFailed(f"unknown role {role!r}; use one of: {', '.join(ROLES)}")
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
            self._cache.pop(key.secret_hash, None)
            s.flush()
            s.expunge(key)
            return key

    def authenticate(self, secret: str) -> Principal:
        if not looks_like_key(secret):
            raise Unauthorized(
                "malformed API key; keys look like 'mw_…' "
                "(create one with `modelworks keys create`)"
            )
        with self.sessions() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.prefix == secret[:PREFIX_LEN]))
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
            key_id=key.id, prefix=key.prefix, project_id=key.project_id, role=key.role
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key.secret_hash] = (
            time.monotonic() + CACHE_TTL_S,
            principal,
            _aware(key.expires_at) if key.expires_at is not None else None,
        )
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


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
