"""Settings, read from `OA_*` environment variables.

One URL per store decides whether the embedded store or a server is used:

- `OA_DATABASE_URL` unset → SQLite under `OA_DATA_DIR`; else any SQLAlchemy URL
  (`postgresql+psycopg://...`).
- `OA_REDIS_URL` unset → in-process fakeredis; else `redis://...`.
- `OA_CLICKHOUSE_URL` unset → chdb under `OA_DATA_DIR`; else `http(s)://...` or `chdb:///path`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "openanalytics"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OA_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Folder for embedded stores.")
    database_url: str | None = Field(default=None, description="Control plane (SQLAlchemy URL).")
    redis_url: str | None = Field(default=None, description="Hot state (redis:// URL).")
    clickhouse_url: str | None = Field(default=None, description="Events (http(s):// or chdb:// URL).")

    redis_max_connections: int = Field(default=50, ge=2, le=10_000, description="Redis connections per process.")

    host: str = "127.0.0.1"
    port: int = 8000

    stream_key: str = Field(default="oa:events", description="Redis Stream holding accepted events.")
    worker_batch_size: int = Field(default=5000, ge=1, le=100_000)
    worker_block_ms: int = Field(default=500, ge=10, le=60_000)
    worker_claim_idle_ms: int = Field(
        default=60_000, ge=1000, description="Pending events idle this long are taken over from a dead worker."
    )
    worker_name: str = Field(
        default_factory=socket.gethostname,
        description="Consumer name; a restarted worker with the same name resumes its own batch at once.",
    )

    ingest_max_queued: int = Field(
        default=1_000_000, ge=1,
        description="Most events waiting in the ingest stream; past it server-side events get 503, /collect hits are dropped.",
    )
    ingest_max_memory_share: float = Field(
        default=0.8, gt=0, le=1,
        description="Share of Redis's maxmemory (when it has one) past which ingest stops as at ingest_max_queued.",
    )
    events_wait_fsync: bool = Field(
        default=False, description="Answer 202 only once Redis has the events on disk (WAITAOF, or appendfsync always).",
    )
    events_wait_replicas: int = Field(
        default=0, ge=0, le=16, description="Answer 202 only once this many Redis replicas have the events (WAIT).",
    )
    events_wait_timeout_ms: int = Field(
        default=2000, ge=1, le=60_000, description="How long a 202 waits for that confirmation before a 503.",
    )
    privacy_retry_seconds: int = Field(
        default=24 * 3600, ge=1,
        description="How long a deletion request is retried (with backoff) through failures before it ends failed.",
    )

    collect_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    collect_max_batch: int = Field(default=50, ge=1, le=1000)
    events_max_batch: int = Field(default=1000, ge=1, le=10_000)
    events_max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, description="Largest server-side body.")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs of proxies whose X-Forwarded-For is believed (JSON list or comma-separated).",
    )
    auth_failures_per_minute: int = Field(
        default=20, ge=1, description="Failed authentications per client IP per minute before every attempt is refused."
    )
    cache_ttl_seconds: float = Field(default=1.0, ge=0, le=60, description="Project/key cache lifetime.")

    geoip_path: Path | None = Field(
        default=None,
        description="MaxMind-format database (City or Country). Default: OA_DATA_DIR/geoip/country.mmdb if present.",
    )

    plans_file: Path | None = Field(
        default=None,
        description="JSON plan definitions replacing the built-in plan limits; `migrate` re-applies them.",
    )

    prometheus_port: int | None = Field(default=None, ge=1, le=65535,
                                        description="Serve Prometheus metrics on this port (off when unset).")
    prometheus_host: str = Field(default="0.0.0.0", description="Interface of the Prometheus endpoint.")
    collect_trace_ratio: float | None = Field(
        default=None, ge=0, le=1,
        description="Share of /collect requests traced when telemetry is on (default: 0.01, at most the sampler's).",
    )

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(default="json", description="Log lines as JSON (with trace ids) or text.")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value):
        if isinstance(value, str):
            value = [part.strip() for part in value.strip("[]").replace('"', "").split(",") if part.strip()]
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # fails on nonsense, at start
        return value

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'control.sqlite3'}"

    @property
    def effective_clickhouse_url(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def effective_geoip_path(self) -> Path:
        return self.geoip_path or self.data_dir / "geoip" / "country.mmdb"

    @property
    def clickhouse_is_embedded(self) -> bool:
        return self.effective_clickhouse_url.startswith("chdb:")


@lru_cache
def get_settings() -> Settings:
    return Settings()
