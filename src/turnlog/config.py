"""Settings, read once from the environment (README.md, "Commands"; docs/operations.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

from turnlog.models import Catalog


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob turnlog reads from the environment, with its default."""

    database_url: str | None = None
    data_dir: Path = Path(".turnlog")
    jwt_secret: str | None = None
    default_model: str = "demo:default"
    checkpoint_s: float = 1.0
    heartbeat_s: float = 15.0
    max_message_chars: int = 100_000
    shutdown_grace_s: float = 10.0
    # How long one database call may take (connection included) before the request gets a
    # 503 with Retry-After (1 s once the database is known to be down); and how long a
    # client may take to send a request head.
    db_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    anthropic_api_key: str | None = None
    gemini_api_key: str | None = None
    # Providers, models and access (env + TURNLOG_CONFIG), and how long a provider may take.
    models: Catalog = msgspec.field(default_factory=Catalog.demo_only)
    provider_connect_timeout_s: float = 10.0
    provider_first_token_timeout_s: float = 120.0
    provider_stall_timeout_s: float = 60.0
    provider_retries: int = 3
    provider_backoff_s: float = 0.5
    cors_origins: tuple[str, ...] = ()
    # Where this instance serves its live streams to the other instances (docs/deployment.md).
    internal_host: str = "127.0.0.1"
    # Per-user limits (0: unlimited), counted in the database across processes.
    max_concurrent_generations: int = 0
    max_sends_per_minute: int = 0
    # Request bodies larger than this are refused with 413 before they are read whole;
    # 0: 8 MiB, or more if max_message_chars needs it (the longest content, JSON-escaped).
    max_body_bytes: int = 0
    # Automatic titles (turnlog.product.titles): on unless TURNLOG_AUTO_TITLES=0; the model
    # that writes them (None: the conversation's own).
    auto_titles: bool = True
    title_model: str | None = None
    # Recovery (docs/operations.md): a generating row whose process died is continued by a
    # surviving instance ("continue") or ends interrupted ("interrupt"); continued at most
    # this many times, and only while its last stored write is younger than the max age.
    recovery: Literal["continue", "interrupt"] = "continue"
    recovery_max_attempts: int = 3
    recovery_max_age_s: float = 600.0

    @property
    def body_limit(self) -> int:
        """The request body limit in bytes."""
        # 8 MiB also leaves room for a long history that `POST /v1/ui/chat` carries.
        return self.max_body_bytes or max(8 << 20, 6 * self.max_message_chars + (64 << 10))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        e = dict(os.environ) if env is None else env

        def number(name: str, default: float) -> float:
            raw = e.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {raw!r}")
            return value

        def count(name: str, default: int) -> int:
            raw = e.get(name)
            if raw is None or raw == "":
                return default
            if not raw.strip().isdigit():
                raise ValueError(f"{name} must be a whole number >= 0, got {raw!r}")
            return int(raw)

        def switch(name: str, default: bool) -> bool:
            raw = (e.get(name) or "").strip().lower()
            if not raw:
                return default
            if raw in ("1", "true", "on", "yes"):
                return True
            if raw in ("0", "false", "off", "no"):
                return False
            raise ValueError(f"{name} must be 1 or 0, got {e.get(name)!r}")

        d = cls()  # the defaults
        models = Catalog.load(e)
        recovery = (e.get("TURNLOG_RECOVERY") or d.recovery).strip().lower()
        if recovery not in ("continue", "interrupt"):
            raise ValueError(f"TURNLOG_RECOVERY must be continue or interrupt, got {recovery!r}")
        return cls(
            database_url=e.get("TURNLOG_DATABASE_URL") or None,
            data_dir=Path(e.get("TURNLOG_DATA_DIR") or d.data_dir).absolute(),
            jwt_secret=e.get("TURNLOG_JWT_SECRET") or None,
            default_model=e.get("TURNLOG_DEFAULT_MODEL") or d.default_model,
            checkpoint_s=number("TURNLOG_CHECKPOINT_S", d.checkpoint_s),
            heartbeat_s=number("TURNLOG_HEARTBEAT_S", d.heartbeat_s),
            max_message_chars=int(number("TURNLOG_MAX_MESSAGE_CHARS", d.max_message_chars)),
            shutdown_grace_s=number("TURNLOG_SHUTDOWN_GRACE_S", d.shutdown_grace_s),
            db_timeout_s=number("TURNLOG_DB_TIMEOUT_S", d.db_timeout_s),
            header_timeout_s=number("TURNLOG_HEADER_TIMEOUT_S", d.header_timeout_s),
            openai_api_key=e.get("OPENAI_API_KEY") or None,
            openai_base_url=e.get("OPENAI_BASE_URL") or None,
            anthropic_api_key=e.get("ANTHROPIC_API_KEY") or None,
            gemini_api_key=e.get("GEMINI_API_KEY") or None,
            # Per-user limits: the environment, else TURNLOG_CONFIG's [limits], else none.
            max_concurrent_generations=count(
                "TURNLOG_MAX_CONCURRENT_GENERATIONS",
                models.limits.get("max_concurrent_generations", 0),
            ),
            max_sends_per_minute=count(
                "TURNLOG_MAX_SENDS_PER_MINUTE", models.limits.get("max_sends_per_minute", 0)
            ),
            max_body_bytes=count("TURNLOG_MAX_BODY_BYTES", 0),
            models=models,
            provider_connect_timeout_s=number(
                "TURNLOG_PROVIDER_CONNECT_TIMEOUT_S", d.provider_connect_timeout_s
            ),
            provider_first_token_timeout_s=number(
                "TURNLOG_PROVIDER_FIRST_TOKEN_TIMEOUT_S", d.provider_first_token_timeout_s
            ),
            provider_stall_timeout_s=number(
                "TURNLOG_PROVIDER_STALL_TIMEOUT_S", d.provider_stall_timeout_s
            ),
            provider_retries=count("TURNLOG_PROVIDER_RETRIES", d.provider_retries),
            provider_backoff_s=number("TURNLOG_PROVIDER_BACKOFF_S", d.provider_backoff_s),
            cors_origins=tuple(
                o.strip().rstrip("/")
                for o in e.get("TURNLOG_CORS_ORIGINS", "").split(",")
                if o.strip()
            ),
            internal_host=e.get("TURNLOG_INTERNAL_HOST") or d.internal_host,
            auto_titles=switch("TURNLOG_AUTO_TITLES", d.auto_titles),
            title_model=e.get("TURNLOG_TITLE_MODEL") or None,
            recovery="continue" if recovery == "continue" else "interrupt",
            recovery_max_attempts=count("TURNLOG_RECOVERY_MAX_ATTEMPTS", d.recovery_max_attempts),
            recovery_max_age_s=number("TURNLOG_RECOVERY_MAX_AGE_S", d.recovery_max_age_s),
        )
