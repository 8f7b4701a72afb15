"""Request and response bodies of the management API (`/api/v1`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from modelworks.auth.limits import MAX_RATE, MIN_RATE
from modelworks.db.tables import ApiKey, Model, ModelVersion


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back without a zone; they were written in UTC
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _future(value: datetime | None) -> datetime | None:
    """An expiry as asked: a time without a zone is UTC; it must lie ahead and be a time UTC
    can hold (an offset may not push it past year 9999 or before year 1)."""
    if value is None:
        return None
    try:
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC") from None
    if aware <= datetime.now(UTC):
        raise ValueError("the time is in the past; give a future expiry, e.g. 2030-01-01T00:00Z")
    return aware


Timestamp = Annotated[datetime, AfterValidator(_utc)]
OptionalTimestamp = Annotated[datetime | None, AfterValidator(_utc)]
# model version id -> (load status, reason) in this server's model pool
LoadStatus = Callable[[int], tuple[str, str]]


def _unloaded(version_id: int) -> tuple[str, str]:
    return "unloaded", ""


class ModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200, description="^[a-z0-9][a-z0-9._-]{0,63}$")
    task: str = Field("tensor", max_length=64)
    description: str = Field("", max_length=10_000)
    tags: dict[str, str] = Field(default_factory=dict, max_length=64)


class ModelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    task: str | None = Field(None, max_length=64)
    description: str | None = Field(None, max_length=10_000)
    tags: dict[str, str] | None = Field(None, max_length=64)
    serving: dict[str, float] | None = Field(
        None, max_length=8, description="max_batch_size (1-4096), max_delay_ms (0-1000)"
    )


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # strict: "01", 1.0 or true are not version 1
    version: int = Field(ge=1, le=999_999_999, strict=True)
    warm: bool = Field(
        True, description="Load and warm the version before the alias moves (no cold requests)."
    )


class Quota(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: int | None = Field(None, ge=0, description="Inference requests per UTC day.")
    items: int | None = Field(None, ge=0, description="Rows, sentences or images per UTC day.")
    tokens: int | None = Field(None, ge=0, description="Tokens per UTC day (text models).")

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("", max_length=128)
    role: str = Field("developer", max_length=16)
    project: str | None = Field(
        None, max_length=64, description="Project of the key (admin keys only; default: yours)."
    )
    models: list[str] | None = Field(
        None, max_length=1000, description="Only these models may be read and called."
    )
    rate_limit: float | None = Field(
        None, ge=MIN_RATE, le=MAX_RATE, description="Requests per second."
    )
    burst: int | None = Field(None, ge=1, description="Requests allowed at once above the rate.")
    quota: Quota | None = None
    expires_at: Annotated[datetime | None, AfterValidator(_future)] = None


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(max_length=200)
    description: str = Field("", max_length=10_000)
    rate_limit: float | None = Field(
        None, ge=MIN_RATE, le=MAX_RATE, description="Default requests/s of its keys."
    )
    burst: int | None = Field(None, ge=1)
    quota: Quota | None = None


class ProjectPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    description: str | None = Field(None, max_length=10_000)
    rate_limit: float | None = Field(None, ge=MIN_RATE, le=MAX_RATE)
    burst: int | None = Field(None, ge=1)
    quota: Quota | None = None


class Ceilings(BaseModel):
    rate_limit: float | None
    burst: int | None
    quota: dict[str, int]


class ProjectOut(BaseModel):
    name: str
    description: str
    rate_limit: float | None = Field(description="Requests/s its keys run under at most.")
    burst: int | None
    quota: dict[str, int] = Field(description="Daily quotas its keys run under at most.")
    ceilings: Ceilings = Field(
        description="The limits an admin set: owners may lower the project's limits below "
        "these, never raise them."
    )
    created_at: Timestamp

    @classmethod
    def of(cls, p: Any) -> ProjectOut:
        ceilings = Ceilings(rate_limit=p.rate_limit, burst=p.burst, quota=p.quota or {})
        owner_quota = p.owner_quota or {}
        kinds = sorted(set(ceilings.quota) | set(owner_quota))
        return cls(
            name=p.name,
            description=p.description,
            rate_limit=_lowest(p.owner_rate_limit, p.rate_limit),
            burst=_lowest(p.owner_burst, p.burst),
            quota={
                k: v
                for k in kinds
                if (v := _lowest(owner_quota.get(k), ceilings.quota.get(k))) is not None
            },
            ceilings=ceilings,
            created_at=p.created_at,
        )


def _lowest(*values: Any) -> Any:
    """The tightest of limits that are set (None: none is)."""
    return min((v for v in values if v is not None), default=None)


class VersionOut(BaseModel):
    model: str
    version: int
    format: str
    digest: str
    size: int
    signature: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    description: str
    created_by: str
    created_at: Timestamp
    status: str = "ready"
    status_reason: str = ""
    artifacts: dict[str, Any] = {}
    aliases: list[str] = []
    load_status: str = Field(
        "unloaded", description="This server's copy: unloaded, loading, ready or failed."
    )
    load_reason: str = Field(
        "", description="Why it failed to load; or, when ready, a warm-up that failed."
    )

    @classmethod
    def of(
        cls,
        model_name: str,
        v: ModelVersion,
        aliases: list[str] | None = None,
        load: LoadStatus = _unloaded,
    ) -> VersionOut:
        load_status, load_reason = load(v.id)
        return cls(
            model=model_name,
            version=v.version,
            format=v.format,
            digest=v.digest,
            size=v.size,
            signature=v.signature,
            metrics=v.metrics,
            lineage=v.lineage,
            description=v.description,
            created_by=v.created_by,
            created_at=v.created_at,
            status=v.status,
            status_reason=v.status_reason,
            artifacts=v.artifacts or {},
            aliases=aliases or [],
            load_status=load_status,
            load_reason=load_reason,
        )


class ModelOut(BaseModel):
    name: str
    task: str
    description: str
    tags: dict[str, Any]
    serving: dict[str, Any]
    created_by: str
    created_at: Timestamp
    updated_at: Timestamp
    latest_version: int | None
    versions: int
    aliases: dict[str, int]

    @classmethod
    def of(cls, m: Model) -> ModelOut:
        return cls(
            name=m.name,
            task=m.task,
            description=m.description,
            tags=m.tags,
            serving=m.serving or {},
            created_by=m.created_by,
            created_at=m.created_at,
            updated_at=m.updated_at,
            latest_version=max((v.version for v in m.versions), default=None),
            versions=len(m.versions),
            aliases={a.name: a.target.version for a in m.aliases},
        )


class ModelDetail(ModelOut):
    version_list: list[VersionOut]

    @classmethod
    def detail(cls, m: Model, load: LoadStatus = _unloaded) -> ModelDetail:
        base = ModelOut.of(m)
        by_version: dict[int, list[str]] = {}
        for alias, version in base.aliases.items():
            by_version.setdefault(version, []).append(alias)
        return cls(
            **base.model_dump(),
            version_list=[
                VersionOut.of(m.name, v, sorted(by_version.get(v.version, [])), load)
                for v in m.versions
            ],
        )


class AliasOut(BaseModel):
    model: str
    alias: str
    version: int


class KeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    role: str
    project: str
    models: list[str] | None = None
    rate_limit: float | None = None
    burst: int | None = None
    quota: dict[str, int] = {}
    created_by: str
    created_at: Timestamp
    expires_at: OptionalTimestamp
    revoked_at: OptionalTimestamp
    last_used_at: OptionalTimestamp

    @classmethod
    def of(cls, k: ApiKey, project: str) -> KeyOut:
        return cls(
            id=k.id,
            name=k.name,
            prefix=k.prefix,
            role=k.role,
            project=project,
            models=k.models,
            rate_limit=k.rate_limit,
            burst=k.burst,
            quota=k.quota or {},
            created_by=k.created_by,
            created_at=k.created_at,
            expires_at=k.expires_at,
            revoked_at=k.revoked_at,
            last_used_at=k.last_used_at,
        )


class EffectiveLimits(BaseModel):
    rate_limit: float | None = Field(description="Requests/s the key runs under; null: none.")
    burst: int | None
    quota: dict[str, int] = Field(description="Daily quotas by kind (requests, items, tokens).")
    sources: dict[str, str] = Field(
        description='Where each limit comes from: "key", "project", or "key rate" / '
        '"project rate" for a burst defaulted from that rate (keys: rate, burst, quota.KIND).'
    )


class KeyDetail(KeyOut):
    limits: EffectiveLimits


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown once: store it now.")


class Deleted(BaseModel):
    deleted: str
