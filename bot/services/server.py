"""A server's settings as the cogs read them: its limits over the bot's defaults and its allowed
base models. ``/server settings`` (``bot.cogs.server``) decides who changes them and how."""

from __future__ import annotations

from .base import Actor, Service

# Trainer settings a server manager sets as the default of the server's runs, and a session's owner
# (or a manager) as the default of the session's: above the bot's defaults, below a run's own options.
RUN_DEFAULTS = ("quantize",)

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

    def run_defaults(self, session) -> dict:
        """The trainer settings (``RUN_DEFAULTS``) the server and then the session chose for its runs."""
        stored = self._db.guild_settings(session.guild_id)
        by_session = (stored.get("session_run_defaults") or {}).get(str(session.id)) or {}
        return {**(stored.get("run_defaults") or {}), **by_session}

    def set_run_defaults(self, guild_id: int, **values) -> dict:
        """Store the server's run defaults (None: left as it is; the caller checked it may); returns them."""
        stored = dict(self._db.guild_settings(guild_id).get("run_defaults") or {})
        given = {k: v for k, v in values.items() if k in RUN_DEFAULTS and v is not None}
        if not given:
            return stored
        return self.store(guild_id, "run_defaults", {**stored, **given})["run_defaults"]

    def set_session_run_defaults(self, session, actor: Actor, **values) -> dict:
        """Store one session's run defaults (its owner or a manager); returns them."""
        given = {k: v for k, v in values.items() if k in RUN_DEFAULTS and v is not None}
        by_session = dict(self._db.guild_settings(session.guild_id).get("session_run_defaults") or {})
        if not given:
            return by_session.get(str(session.id)) or {}
        self.services.sessions.require(session, actor, "manage")
        by_session[str(session.id)] = {**(by_session.get(str(session.id)) or {}), **given}
        return self.store(session.guild_id, "session_run_defaults", by_session)["session_run_defaults"][str(session.id)]

    def store(self, guild_id: int, key: str, value) -> dict:
        """Set one of the server's settings (None: back to the default); returns them all."""
        return self._db.set_guild_setting(guild_id, key, value)
