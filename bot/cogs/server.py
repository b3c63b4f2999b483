"""``/server settings``: the server's limits and allowed base models (server managers only)."""

from __future__ import annotations

from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from trainer.kinds import IMAGE

from ..client import LoracordBot, actor_of
from ..display import model_name
from ..options import Setting
from ..services import Actor, Refusal, Services
from ..services.server import CAPTIONS_OFF

LIMITS = ("max_dataset_items", "max_dataset_mb", "max_file_mb", "max_pending_jobs_per_user", "runs_per_day", "guild_runs_per_day",
          "max_jobs_per_guild", "max_export_mb")


def store_settings(svc: Services, guild_id: int, actor: Actor, limits: dict, sizes: dict,
                   run_defaults: dict | None = None) -> tuple[dict, dict]:
    """Store what a server manager changed (None: left as it is), image sizes first (a resolution is
    checked against the server's image models), then the runs' defaults (``quantize``); returns
    (image sizes, all the server's settings). Runs on the bot's database thread."""
    if not actor.manager:
        raise Refusal("Only server managers (Manage Server permission) can change the server's limits.")
    stored_sizes = svc.sizes.set_server_sizes(guild_id, **sizes)
    svc.server.set_run_defaults(guild_id, **(run_defaults or {}))
    settings = {}
    for key, value in limits.items():
        if value is not None:
            settings = svc.server.store(guild_id, key, value)
    return stored_sizes, settings or svc.server.settings(guild_id)


def caption_choice(value: str | None) -> str | None:
    """A manager's captioning model as stored: a model id, 'off', or '' for the bot's default again."""
    if value is None:
        return None
    value = value.strip()
    return "" if value.lower() == "default" else CAPTIONS_OFF if value.lower() == CAPTIONS_OFF else value


class ServerCog(commands.GroupCog, group_name="server", group_description="Server-wide limits of loracord"):
    def __init__(self, bot: LoracordBot):
        self.bot = bot

    @app_commands.command(name="settings", description="Show or change this server's limits and allowed models (managers)")
    @app_commands.describe(allowed_models="Comma-separated base models; prefix image models with image:",
                           max_dataset_items="Most files in one session's dataset",
                           max_dataset_mb="Largest dataset of one session, in MiB",
                           max_file_mb="Largest single upload, in MiB",
                           max_pending_jobs_per_user="Jobs one member may have queued or running",
                           runs_per_day="Runs one member may start per day",
                           guild_runs_per_day="Runs this server may start per day",
                           max_jobs_per_guild="Jobs of this server that may run at once",
                           max_export_mb="Largest export (e.g. a merged model) a worker may write, in MiB",
                           image_resolution="Image runs' training side in pixels (default: sized to each base and "
                                            "the worker's device)",
                           image_batch_size="Images per step of image runs (default: sized to the device)",
                           image_sample_steps="Denoising steps per image sample (default: sized to the device)",
                           image_scorer="CLIP model (hub id or worker folder) that scores image samples; none: "
                                        "scores unavailable",
                           caption_model="Model that captions images (hub id or folder); off: no automatic captions; "
                                         "default: the bot's",
                           quantize="Runs' frozen base in 4bit/8bit (QLoRA); auto: only where it would not fit")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.guild_only()
    async def settings(self, interaction: discord.Interaction, allowed_models: Optional[str] = None,
                       max_dataset_items: Optional[app_commands.Range[int, 1, 10000]] = None,
                       max_dataset_mb: Optional[app_commands.Range[float, 1.0, 100000.0]] = None,
                       max_file_mb: Optional[app_commands.Range[float, 0.01, 1000.0]] = None,
                       max_pending_jobs_per_user: Optional[app_commands.Range[int, 1, 100]] = None,
                       runs_per_day: Optional[app_commands.Range[int, 1, 1000]] = None,
                       guild_runs_per_day: Optional[app_commands.Range[int, 1, 10000]] = None,
                       max_jobs_per_guild: Optional[app_commands.Range[int, 1, 100]] = None,
                       max_export_mb: Optional[app_commands.Range[float, 0.001, 10_000_000.0]] = None,
                       image_resolution: Setting["resolution"] = None,
                       image_batch_size: Setting["batch_size", IMAGE] = None,
                       image_sample_steps: Setting["sample_steps"] = None,
                       image_scorer: Optional[str] = None,
                       caption_model: Optional[app_commands.Range[str, 1, 200]] = None,
                       quantize: Setting["quantize"] = None) -> None:
        models = [m.strip() for m in allowed_models.split(",") if m.strip()] if allowed_models else None
        values = dict(allowed_models=models, max_dataset_items=max_dataset_items, max_dataset_mb=max_dataset_mb, max_file_mb=max_file_mb,
                      max_pending_jobs_per_user=max_pending_jobs_per_user, runs_per_day=runs_per_day,
                      guild_runs_per_day=guild_runs_per_day, max_jobs_per_guild=max_jobs_per_guild,
                      max_export_mb=max_export_mb,
                      image_scorer=image_scorer.strip() if image_scorer else None,
                      caption_model=caption_choice(caption_model))
        svc = self.bot.services
        sizes, settings = await self.bot.db(store_settings, svc, interaction.guild_id, actor_of(interaction), values,
                                            dict(resolution=image_resolution, batch_size=image_batch_size,
                                                 sample_steps=image_sample_steps), dict(quantize=quantize))
        embed = discord.Embed(title="loracord limits on this server", colour=0x5865F2)
        models_now = settings.get("allowed_models") or self.bot.config.allowed_models
        embed.add_field(name="Allowed models", value=", ".join(f"`{model_name(m)}`" for m in models_now) or "none",
                        inline=False)
        for name in LIMITS:
            default = getattr(self.bot.config, name, None)
            if default is None:
                default = getattr(svc.settings, name)
            embed.add_field(name=name.replace("_", " "), value=str(settings.get(name, default)))
        embed.add_field(name="Image scorer", inline=False,
                        value=f"`{settings['image_scorer']}`" if settings.get("image_scorer") else "none: scores unavailable")
        captioner = svc.server.caption_model(interaction.guild_id)
        embed.add_field(name="Automatic captions", inline=False,
                        value=f"`{model_name(captioner)}`" if captioner else "off: images without a caption train on the "
                                                                  "instance prompt")
        embed.add_field(name="Image run sizes", inline=False, value=", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in sizes.items()) or "sized to each base and the worker's device "
            "(CPU: at most 256 px, batch 1, 8 sampling steps; GPU: the base's native side)")
        runs = settings.get("run_defaults") or {}
        embed.add_field(name="Runs' defaults", inline=False, value=", ".join(f"{k} {v}" for k, v in runs.items())
                        or "quantize auto (the trainer's default)")
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(ServerCog(bot))
