"""Every setting, declared once: name, type, default and help. Read once at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("~/.modelworks")


class Settings(BaseSettings):
    """Server settings. Each field is read from `MODELWORKS_<NAME>`; CLI flags override."""

    model_config = SettingsConfigDict(env_prefix="MODELWORKS_", extra="ignore", frozen=True)

    home: Path = Field(
        DEFAULT_HOME,
        description="Data home: holds the SQLite database and the artifact folder by default.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the registry database. Empty: SQLite file in the home.",
    )
    store_url: str = Field(
        "",
        description="Artifact store: a folder or any fsspec URL. Empty: `artifacts/` in the home.",
    )
    host: str = Field("127.0.0.1", description="Address the server binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port the server binds.")
    auth: bool = Field(
        True,
        description="Require an API key on every route but health (refused off on a public bind).",
    )
    max_upload_bytes: int = Field(
        2 * 1024**3, gt=0, description="Largest model file accepted by an upload, in bytes."
    )
    max_request_bytes: int = Field(
        64 * 1024**2, gt=0, description="Largest inference request body, in bytes."
    )
    max_tensor_elements: int = Field(
        16 * 1024**2, gt=0, description="Most elements one inference tensor may hold."
    )
    max_response_bytes: int = Field(
        64 * 1024**2,
        gt=0,
        description="Largest inference answer, in bytes; a bigger one is refused with 413.",
    )
    max_extract_bytes: int = Field(
        8 * 1024**3,
        gt=0,
        description="Scratch bytes one archive may unpack to (uploads and their inspection).",
    )
    export_memory_mb: int = Field(
        8192,
        ge=0,
        description="Address space of one ONNX export child process, in MiB (0: no limit).",
    )
    job_workers: int = Field(
        1,
        ge=0,
        le=64,
        description=(
            "Job worker processes `modelworks serve` starts beside the server (0: none; run "
            "`modelworks worker` elsewhere)."
        ),
    )
    max_train_workers: int = Field(
        4,
        ge=1,
        le=256,
        description=(
            "Most data-parallel ranks one training job may ask for (`workers`); each rank "
            "gets the cores divided by the ranks."
        ),
    )
    job_lease_s: float = Field(
        30.0,
        ge=1.0,
        le=3600.0,
        description=(
            "Seconds a worker holds a job without a heartbeat; past it another worker takes "
            "the job over (its worker renews it every few seconds)."
        ),
    )
    docs_public: bool = Field(
        False,
        description="Serve /docs, /redoc and /openapi.json without a key (off: a key is needed).",
    )
    trusted_proxies: str = Field(
        "",
        description="Proxies whose X-Forwarded-For is believed, comma-separated; empty: none.",
    )
    inference_threads: int = Field(
        0, ge=0, description="Intra-op threads per ONNX Runtime session. 0: one per core."
    )
    memory_budget_mb: int = Field(
        4096,
        ge=0,
        description="Memory for loaded models; least recently used unload past it (0: no limit).",
    )
    inference_memory_mb: int = Field(
        2048,
        ge=0,
        description=(
            "Memory ONNX Runtime may allocate for running models (all requests together, on top "
            "of memory_budget_mb), in MiB; a run that needs more is refused with 413 (0: no limit)."
        ),
    )
    process_memory_mb: int = Field(
        -1,
        ge=-1,
        description=(
            "Data memory the server process may hold, in MiB (the kernel's RLIMIT_DATA): past "
            "it a run answers 413 and the server goes on. -1: what it holds at start plus "
            "memory_budget_mb, inference_memory_mb and headroom (off with CUDA); 0: no limit."
        ),
    )
    queue_size: int = Field(
        512, ge=1, description="Requests queued per model before it answers 503 with Retry-After."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of an inference request; past it the request gets 504."
    )
    metering: bool = Field(
        True, description="Record usage per key x model x hour (what a team bills on)."
    )
    limits_url: str = Field(
        "memory://",
        description="Rate-limit and quota state: memory:// (one node) or redis://host/0 (shared).",
    )
    allowed_hosts: str = Field(
        "localhost,127.0.0.1,[::1]",
        description="Host names the server answers to, comma-separated (DNS rebinding guard).",
    )
    cors_origins: str = Field(
        "", description="Browser origins allowed to call the API, comma-separated; empty: none."
    )
    auth_failures_per_minute: int = Field(
        30, ge=1, description="Failed authentications per client address per minute before 429."
    )
    encryption_key_file: Path | None = Field(
        None, description="File with a 32-byte key: artifacts are stored AES-GCM encrypted."
    )
    log_level: str = Field("info", description="Server log level (debug, info, warning, error).")

    @model_validator(mode="after")
    def _expand_home(self) -> Settings:
        object.__setattr__(self, "home", self.home.expanduser())
        return self

    @property
    def host_names(self) -> list[str]:
        names = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        if "*" in names:
            return ["*"]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return sorted({*names, host, self.host})

    @property
    def proxies(self) -> list[str]:
        return [a.strip() for a in self.trusted_proxies.split(",") if a.strip()]

    @property
    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip() and o.strip() != "*"]

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'modelworks.db'}"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or str(self.home / "artifacts")


def settings_table() -> list[tuple[str, str, str, str]]:
    """(env var, type, default, help) for every setting: the README table is checked against it."""
    rows = []
    for name, field in Settings.model_fields.items():
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
        if args:  # Optional[X]
            type_name = f"{getattr(args[0], '__name__', args[0])} (optional)"
        else:
            type_name = getattr(ann, "__name__", str(ann))
        default = field.default
        shown = "" if default in ("", None) else str(default)
        rows.append((f"MODELWORKS_{name.upper()}", type_name, shown, field.description or ""))
    return rows
