"""Settings of the Discord bot, read from ``.env`` and the environment (``LORACORD_*``).

The storage layer's own settings (data folder, queue URL, job limits) stay in
``storage.settings.Settings``; these are the ones only the bot reads. A guild may override
any of the ``guild_*`` limits with ``/server settings`` (kept in the guild's settings row).
"""

from __future__ import annotations

import os
import shutil
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

from trainer import kinds
from trainer.image.captioner import DEFAULT_MODEL as DEFAULT_CAPTION_MODEL
from trainer.limits import MAX_FILE_BYTES, MiB


class BotSettings(BaseSettings):
    """What the bot needs beyond storage: the token, the models members may pick, and limits."""

    model_config = SettingsConfigDict(env_prefix="LORACORD_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    discord_token: str = Field("", validation_alias=AliasChoices("DISCORD_TOKEN", "LORACORD_DISCORD_TOKEN"),
                               description="Bot token; empty starts the offline playground.")
    hf_token: str = Field("", validation_alias=AliasChoices("HF_TOKEN", "LORACORD_HF_TOKEN"), repr=False,
                          description="Hugging Face token for gated base models (passed to workers, never logged).")
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["smollm2-135m"],
        description="Base models members may pick, comma-separated; prefix image models with 'image:'.")
    dev_guild_id: int | None = Field(None, description="Sync commands to this guild at start-up (instant).")
    message_content: bool = Field(True, description="Ask for the message-content intent (plain attachments in threads).")
    session_threads: bool = Field(True, description="Open each session in a new thread of the channel; False keeps "
                                  "it in the channel where /session new ran, one session per channel (the offline "
                                  "playground, whose page shows one channel).")
    max_dataset_items: int = Field(200, ge=1, description="Most files a session's dataset may hold.")
    max_dataset_mb: float = Field(200.0, gt=0, description="Largest total dataset size per session, in MiB.")
    max_file_mb: float = Field(MAX_FILE_BYTES / MiB, gt=0, le=MAX_FILE_BYTES / MiB, description=(
        "Largest single upload, in MiB, up to what the trainer reads (trainer.limits); Discord's own limit also applies."))
    max_export_mb: float = Field(20480.0, gt=0, description=(
        "Largest export one job may write to the blob store (a merged model is as large as its base), in MiB."))
    export_base_url: str = Field("", description=(
        "Public URL of the blob store's folder: an export over Discord's upload limit is linked as this URL and the "
        "blob's path, where the store cannot sign links itself (s3 and gcs can); empty: its path on the host is said."))
    export_link_hours: float = Field(24.0, gt=0, description="How long a signed link to an export stays valid.")
    max_pending_jobs_per_user: int = Field(2, ge=1, description="Queued or running jobs one member may have.")
    runs_per_day: int = Field(10, ge=1, description="Training runs one member may start per day.")
    guild_runs_per_day: int = Field(50, ge=1, description="Training runs one guild may start per day.")
    train_cooldown_s: float = Field(10.0, ge=0, description="Seconds between two /train commands of one member.")
    progress_edit_s: float = Field(3.0, ge=0, description="Least time between two edits of a progress message.")
    pump_s: float = Field(1.0, gt=0, description="How often the bot collects worker reports.")
    text_train_defaults: dict = Field(default_factory=dict, description="Trainer settings every text run starts "
                                      "from (JSON, e.g. {\"seq_len\": 128} on small hosts); members' options win.")
    image_train_defaults: dict = Field(default_factory=dict, description="Trainer settings every image run starts "
                                       "from (JSON, e.g. {\"resolution\": 768}); members' options win.")
    train_threads: int | None = Field(None, ge=1, description="CPU threads per training job (None: torch's default).")
    caption_model: str = Field(DEFAULT_CAPTION_MODEL, description=(
        "Vision-language model that captions images nobody captioned (hub id or folder, loaded natively by "
        "transformers); 'off' switches automatic captions off. A server manager may choose another."))
    worker_device: Literal["auto", "cpu", "gpu"] = Field("auto", description=(
        "Where image jobs are expected to train, for the sizes the bot checks uploads against and announces "
        "(the worker sizes the run itself); auto: a GPU when this machine has an NVIDIA driver, else a CPU."))

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        return [v.strip() for v in value if v and v.strip()]

    def models_for(self, kind: str, guild_settings: dict | None = None) -> list[str]:
        """Allowed base models of one kind (unmarked, or after the kind's ``model_prefix``), the guild's
        list when it set one."""
        names = (guild_settings or {}).get("allowed_models") or self.allowed_models
        wanted = kinds.get(kind)
        return [model for marked, model in map(kinds.of_model, names) if marked is wanted]

    def train_defaults(self, kind: str) -> dict:
        """The trainer settings runs of ``kind`` start from (``text_train_defaults``, ``image_train_defaults``)."""
        return getattr(self, f"{kind}_train_defaults")

    def expected_device(self) -> str:
        """'gpu' or 'cpu': where this bot's image jobs are expected to train (without importing torch)."""
        if self.worker_device != "auto":
            return self.worker_device
        return "gpu" if os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") else "cpu"

    def limit(self, name: str, guild_settings: dict | None = None):
        """A limit, overridden by the guild's setting of the same name when it has one."""
        value = (guild_settings or {}).get(name)
        return getattr(self, name) if value is None else value
