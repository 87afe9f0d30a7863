"""The one place that reads the environment: every `EMOE_*` variable lands in `Settings`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "change_me", "secret", "password", "default", "none"}
)


class Settings(BaseSettings):
    """Runtime configuration, read from `EMOE_*` environment variables (and a `.env` file if present)."""

    model_config = SettingsConfigDict(env_prefix="EMOE_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------
    home: Path = Field(default=Path.home() / ".emoe-gate", description="Data folder of the embedded default.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means the embedded SQLite file under `home`."
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (Redis) URL; unset means embedded mode (in-process worker)."
    )
    artifacts_dir: Path | None = Field(
        default=None, description="Where images are written; default `home/artifacts`."
    )

    # --- the model ----------------------------------------------------------
    ensemble: str = Field(
        default="default",
        description=(
            "`default` (the shipped reference ensemble), `tiny` (seeded random, for tests), a segmoe YAML "
            "or a merged checkpoint folder."
        ),
    )
    device: str = "cpu"
    dtype: str = Field(default="float32", description="float32, float16 or bfloat16 (float32 on CPU).")
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "CPU threads of each worker process; default: the cores this process may use (its CPU affinity, "
            "at most its cgroup CPU quota) divided among the worker's pool processes (at least 1)."
        ),
    )
    allow_network: bool = Field(
        default=False, description="Let segmoe download hub ids named in a YAML config (never otherwise)."
    )

    # --- gate and policy ----------------------------------------------------
    policy_path: Path | None = Field(
        default=None, description="Policy YAML in force; default: the bundled one."
    )
    gate_batch_size: int = Field(default=8, ge=1, le=256)
    gate_batch_wait_ms: int = Field(default=20, ge=0, le=10_000)
    render_batch_size: int = Field(
        default=8,
        ge=1,
        le=64,
        description=(
            "Accepted jobs a render worker renders in one denoising loop (same size, steps, guidance, "
            "scheduler and mode); bench/render_batch.py measured the default."
        ),
    )

    # --- gateway limits -----------------------------------------------------
    max_prompt_chars: int = Field(default=1000, ge=1)
    score_max_prompts: int = Field(default=32, ge=1)
    queue_max_depth: int = Field(default=1000, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    job_timeout_s: int = Field(
        default=600, ge=1, description="Longest a job may run; the broker's visibility timeout is above it."
    )
    max_image_side: int = Field(
        default=1024, ge=64, description="Largest height or width a request may ask for."
    )
    max_wait_s: float = Field(default=60.0, ge=0, description="Longest `?wait=` a request may ask for.")

    # --- fair shares: per API key and per tenant (gateway.admission) ---------
    max_request_cost: int = Field(
        default=512 * 512 * 25 * 4,
        ge=1,
        description=(
            "Largest height x width x steps x images one request may ask for (full mode: one image per "
            "expert); default: four 512x512 images at 25 steps."
        ),
    )
    cost_default_side: int = Field(
        default=512,
        ge=8,
        description="Side counted for a request that names no height/width when the gateway holds no model.",
    )
    cost_full_images: int = Field(
        default=4, ge=1, description="Images a full-mode job is counted for when the gateway holds no model."
    )
    tenant_max_queued: int = Field(
        default=200, ge=1, description="Unfinished (queued, scoring, rendering) jobs one tenant may have."
    )
    submit_rate_per_s: float = Field(
        default=20.0,
        gt=0,
        description="Submissions a second per API key (a token bucket, shared via Redis in real mode).",
    )
    submit_burst: int = Field(default=40, ge=1, description="Submissions an idle API key may make at once.")
    max_waits_per_key: int = Field(
        default=16, ge=1, description="Concurrent waiting requests (`?wait=`, `/v1/score`) per API key."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body; larger ones get 413 unread."
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest a client may take to send a request's headers."
    )
    recover_after_s: int = Field(
        default=30,
        ge=1,
        description="A queued job with no broker message this long after submission is re-enqueued.",
    )
    review_lease_s: int = Field(
        default=120,
        ge=5,
        le=3600,
        description="How long opening a job for review leases it to one reviewer (no one else may review it)",
    )
    webhook_secret: str | None = Field(
        default=None,
        description=(
            "The operator's webhook secret, `whsec_<base64 key>` (any other string is used as the key's "
            "bytes): each tenant's signing secret is derived from it; default: a random one kept in `home`."
        ),
    )
    webhook_secret_previous: str | None = Field(
        default=None,
        description="The operator's previous webhook secret while rotating: webhooks carry both signatures.",
    )

    @field_validator("webhook_secret", "webhook_secret_previous")
    @classmethod
    def _known_webhook_secret(cls, value: str | None) -> str | None:
        import base64
        import binascii

        if value is not None and (not value.strip() or value.strip().lower() in PLACEHOLDER_SECRETS):
            raise ValueError(
                f"EMOE_WEBHOOK_SECRET: {value!r} is not a secret; make one with "
                "`emoe-gate webhooks new-secret` (or unset it: one is then generated in EMOE_HOME)"
            )
        if value is not None and value.startswith("whsec_"):
            try:
                if not base64.b64decode(value[len("whsec_") :], validate=True):
                    raise ValueError("empty")
            except (binascii.Error, ValueError):
                raise ValueError("EMOE_WEBHOOK_SECRET: after whsec_ must come the key in base64") from None
        return value

    webhook_allow: str = Field(
        default="",
        description=(
            "Comma-separated host names and CIDR ranges webhooks may reach although they are not public "
            "(e.g. `127.0.0.1/32,localhost` for a development receiver); default: public addresses only."
        ),
    )

    @field_validator("webhook_allow")
    @classmethod
    def _known_webhook_allow(cls, value: str) -> str:
        import ipaddress
        import re

        for entry in filter(None, (e.strip() for e in value.split(","))):
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", entry):
                    raise ValueError(
                        f"EMOE_WEBHOOK_ALLOW: {entry!r} is neither a host name nor a CIDR range"
                    ) from None
        return value

    webhook_max_attempts: int = Field(default=5, ge=1)
    webhook_concurrency: int = Field(
        default=8, ge=1, description="Deliveries in flight per worker (threads of its own hooks consumer)."
    )
    webhook_per_host: int = Field(
        default=2, ge=1, description="Deliveries in flight to one destination host per hooks consumer."
    )
    webhook_per_tenant: int = Field(
        default=4,
        ge=1,
        description=(
            "Deliveries in flight for one tenant per hooks consumer, whatever their hosts; below "
            "EMOE_WEBHOOK_CONCURRENCY, so that one tenant's slow receivers leave threads to the others."
        ),
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_connect_timeout_s: float = Field(
        default=2.0, gt=0, description="Longest wait for a receiver's TCP/TLS connection."
    )
    webhook_backoff_s: float = Field(
        default=2.0, ge=0, description="First retry delay; doubles per attempt, each times a random 0.5-1."
    )

    # --- dashboard and operations -------------------------------------------
    public_url: str | None = Field(
        default=None,
        description=(
            "The service's public base URL (e.g. `https://gate.example.com`, behind a TLS proxy): the "
            "dashboard's cookie is `Secure` when it is https, and sign-in accepts forms from its origin."
        ),
    )

    @field_validator("public_url")
    @classmethod
    def _known_public_url(cls, value: str | None) -> str | None:
        import urllib.parse

        if value is None or not value.strip():
            return None
        parts = urllib.parse.urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"EMOE_PUBLIC_URL: {value!r} is not an http(s) URL such as https://gate.example")
        return value.strip().rstrip("/")

    dashboard_session_s: int = Field(
        default=8 * 3600, ge=60, description="How long a dashboard sign-in lasts (the cookie's Max-Age)."
    )
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed dashboard sign-ins per client or key prefix before slowing down."
    )
    login_window_s: int = Field(
        default=900, ge=1, description="The window over which failed dashboard sign-ins are counted."
    )
    metrics_token: str | None = Field(
        default=None,
        description=(
            "Bearer token `/metrics` asks for; unset: `/metrics` answers only clients on the loopback address"
        ),
    )

    @field_validator("metrics_token")
    @classmethod
    def _known_metrics_token(cls, value: str | None) -> str | None:
        if value is not None and (len(value.strip()) < 16 or value.strip().lower() in PLACEHOLDER_SECRETS):
            raise ValueError("EMOE_METRICS_TOKEN: use a random token of at least 16 characters")
        return value

    metrics_per_tenant: bool = Field(
        default=False, description="`/metrics` also counts jobs and decisions per tenant (a `tenant` label)."
    )
    audit_key: str | None = Field(
        default=None,
        description=(
            "The key that signs audit checkpoints (HMAC-SHA256); keep it out of the database. "
            "`emoe-gate audit new-key` makes one."
        ),
    )
    audit_key_file: Path | None = Field(
        default=None, description="A file holding the audit key (instead of EMOE_AUDIT_KEY)."
    )

    @field_validator("audit_key")
    @classmethod
    def _known_audit_key(cls, value: str | None) -> str | None:
        if value is not None and (len(value.strip()) < 16 or value.strip().lower() in PLACEHOLDER_SECRETS):
            raise ValueError(
                "EMOE_AUDIT_KEY: use a random key of at least 16 characters (`emoe-gate audit new-key`)"
            )
        return value

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in {"float32", "float16", "bfloat16"}:
            raise ValueError(f"EMOE_DTYPE must be float32, float16 or bfloat16, not {value!r}")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'emoe.db'}"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return self.artifacts_dir or self.home / "artifacts"

    @property
    def embedded(self) -> bool:
        """True without a broker: the gateway runs the same task code in process."""
        return not self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call `get_settings.cache_clear()` after changing the env)."""
    return Settings()
