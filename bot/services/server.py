"""A server's settings as the cogs read them: its limits over the bot's defaults and its allowed
base models. ``/server settings`` (``bot.cogs.server``) decides who changes them and how."""

from __future__ import annotations

from .base import Service

CAPTIONS_OFF = "off"  # the caption model's value that switches automatic captions off


class ServerSettings(Service):
    def settings(self, guild_id: int) -> dict:
        """Everything the server chose (limits, models, image sizes); the bot's defaults fill the rest."""
        return self._db.guild_settings(guild_id)

    def limit(self, guild_id: int, name: str):
        """One limit: the server's own value, else the bot's default (``BotSettings.limit``)."""
        return self._config.limit(name, self._db.guild_settings(guild_id))

    def allowed_models(self, guild_id: int, kind: str) -> list[str]:
        """The base models of ``kind`` this server's sessions may train."""
        return self._config.models_for(kind, self._db.guild_settings(guild_id))

    def caption_model(self, guild_id: int) -> str | None:
        """The model that captions this server's images: the server's choice, else the bot's; None when
        either switched captions off."""
        chosen = self._db.guild_settings(guild_id).get("caption_model") or self._config.caption_model
        return None if chosen.strip().lower() == CAPTIONS_OFF else chosen.strip()

    def store(self, guild_id: int, key: str, value) -> dict:
        """Set one of the server's settings (None: back to the default); returns them all."""
        return self._db.set_guild_setting(guild_id, key, value)
