"""The sizes an image session's runs train at, as the server, the session or the run chose them.

Chosen sizes are stored among the server's settings (``image_sizes`` for the server, and
``session_sizes`` by session id); whatever nobody chose is the trainer's table
(``trainer.image.sizes.resolve_sizes``, read here without torch) for the device the bot expects
its jobs to run on. The worker resolves the same table for its own device when the run starts.
"""

from __future__ import annotations

from storage.db import Session
from trainer import kinds
from trainer.image.sizes import SIZE_KEYS, RunSizes, guess_family, resolution_problem, resolve_sizes

from ..display import model_name
from .base import Actor, Refusal, Service

ImageSizes = RunSizes  # what an image session's next run trains at: the trainer's table, read by the bot


class ImageSizing(Service):
    def image_sizes(self, session: Session, run: dict | None = None) -> ImageSizes:
        """What the session's next image run trains at: the sizes chosen for the run, the session,
        the server or the bot, else the base family's defaults on the device jobs are expected to run
        on (the worker resolves those itself). Refuses a resolution the base cannot take."""
        sizes = resolve_sizes(guess_family(session.base_model or ""), self._config.expected_device(),
                              self._chosen(session, run))
        if sizes.problem:
            problem = sizes.problem
            raise Refusal(f"This session cannot train at that size: {problem[0].upper()}{problem[1:]}. Change it "
                          f"with `/train start resolution:`, `/session settings resolution:` or "
                          f"`/server settings image_resolution:`.")
        return sizes

    def set_server_sizes(self, guild_id: int, **values) -> dict:
        """Store image sizes for every session of the server (the caller checked it may); returns them.
        A resolution is checked against each of the server's image models."""
        values = _given(values)
        stored = self.services.server.settings(guild_id).get("image_sizes") or {}
        if not values:
            return stored
        sized = [model for kind in kinds.KINDS.values() if kind.sized_to_device
                 for model in self.services.server.allowed_models(guild_id, kind.name)]
        self._check_resolution(sized, values)
        return self.services.server.store(guild_id, "image_sizes", {**stored, **values}).get("image_sizes") or {}

    def set_session_sizes(self, session: Session, actor: Actor, **values) -> dict:
        """Store image sizes for one session (its owner or a manager); returns them.
        A resolution is checked against the session's base."""
        values = _given(values)
        self.services.sessions.require(session, actor, "manage")
        if values and not kinds.get(session.kind).sized_to_device:
            raise Refusal("Resolution, batch size and sampling steps are settings of image sessions.")
        by_session = dict(self.services.server.settings(session.guild_id).get("session_sizes") or {})
        key = str(session.id)
        if not values:
            return by_session.get(key) or {}
        self._check_resolution([session.base_model], values)
        by_session[key] = {**(by_session.get(key) or {}), **values}
        return self.services.server.store(session.guild_id, "session_sizes", by_session)["session_sizes"][key]

    def _chosen(self, session: Session, run: dict | None) -> dict:
        """The image sizes somebody chose for a run of ``session``: the bot's defaults, the server's,
        the session's and the run's, the later winning."""
        stored = self.services.server.settings(session.guild_id)
        layers = [self._config.image_train_defaults, stored.get("image_sizes") or {},
                  (stored.get("session_sizes") or {}).get(str(session.id)) or {}, run or {}]
        chosen = {}
        for layer in layers:
            chosen.update({k: layer[k] for k in SIZE_KEYS if layer.get(k) is not None})
        return chosen

    @staticmethod
    def _check_resolution(bases: list[str | None], values: dict) -> None:
        if "resolution" not in values:
            return
        for base in bases:
            problem = resolution_problem(guess_family(base or ""), values["resolution"])
            if problem:
                raise Refusal(f"`{model_name(base)}`: {problem}.")


def _given(values: dict) -> dict:
    return {k: v for k, v in values.items() if k in SIZE_KEYS and v is not None}
