"""Settings of the storage and queue layer, read from ``LORACORD_*`` variables and ``.env``.

Every path defaults to a place under ``data_dir``, so one machine needs no configuration at all.
Scaling out sets two values on every machine: ``LORACORD_QUEUE_URL=redis://host:6379/0`` and
``LORACORD_BLOB_URL=s3://bucket/loracord`` (any fsspec URL both the bot and the workers reach).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where data lives and how jobs are shared out."""

    model_config = SettingsConfigDict(env_prefix="LORACORD_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Folder for the database, the embedded queue, blobs and runs.")
    queue_url: str = Field("", description="Empty: SqliteHuey in DATA/queue.db. redis://...: RedisHuey, shared by workers.")
    queue_name: str = Field("loracord", description="Queue name; bot and workers must agree.")
    blob_url: str = Field("", description="Blob store: empty for DATA/blobs, or an fsspec URL shared with workers.")
    runs_dir: Path | None = Field(None, description="Where a worker keeps run folders (default DATA/runs).")
    max_jobs_per_user: int = Field(1, ge=1, description="Jobs one member may have dispatched or running at once.")
    max_jobs_per_guild: int = Field(2, ge=1, description="Jobs one guild may have dispatched or running at once.")
    max_attempts: int = Field(3, ge=1, description="Starts a job gets before a lost worker fails it.")
    workers: int = Field(1, ge=1, description="Runs one worker process trains at once (huey worker threads; quick jobs such as sampling get one more).")
    heartbeat_s: float = Field(2.0, gt=0, description="How often a worker reports that a job is alive.")
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="Silence after which a job's worker counts as lost.")
    cancel_grace_s: float = Field(20.0, ge=0, description="Time a cancelled job gets to stop by itself before SIGTERM.")
    kill_grace_s: float = Field(5.0, ge=0, description="Time between SIGTERM and SIGKILL.")
    poll_s: float = Field(0.1, gt=0, description="How often the consumer polls an empty queue.")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "loracord.db"

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def blob_location(self) -> str:
        return self.blob_url or str(self.data_dir / "blobs")

    @property
    def run_root(self) -> Path:
        return self.runs_dir or self.data_dir / "runs"

    @property
    def uses_redis(self) -> bool:
        return self.queue_url.startswith(("redis://", "rediss://", "unix://"))

    def describe_queue(self) -> str:
        """The queue location with any password removed, for logs."""
        return redact_url(self.queue_url) if self.queue_url else f"sqlite:{self.queue_path}"


def redact_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://***@host:6379/0``."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
