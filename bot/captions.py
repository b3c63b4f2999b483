"""``/data captions``: every image's caption with where it came from, automatic captions, review and edits.

A ``caption`` job (``storage.jobkinds.caption``) captions the images nobody captioned with the
server's captioning model (``ServerSettings.caption_model``); when it ends the bot stores what it
wrote (never over a member's caption) and says so in the thread (``caption_outcome``). The pager
shows one image at a time with its caption and source, and buttons to move, edit (a modal) and
re-caption. The rules live here and in ``bot.services.data``; ``bot.cogs.data`` calls them.
"""

from __future__ import annotations

import io

import discord

from storage.db import DatasetItem, Job, Session
from trainer import kinds
from trainer.captions import SOURCES
from trainer.errors import UserError

from .display import model_name
from .services import Actor, Refusal, Services, Submitted
from .services.data import caption_source
from .views import guarded

SOURCE_WORDS = {"member": "written by a member", "sidecar": "a sidecar .txt", "metadata": "a metadata.jsonl row",
                "model": "written by the captioning model", "instance_prompt": "none: trains on the instance prompt"}


# ---- rules (on the bot's database thread)
def request_captions(svc: Services, session: Session, actor: Actor, *, item_ids: list[int] | None = None,
                     channel_id: int | None = None) -> tuple[Submitted, int]:
    """Queue a ``caption`` job for the session's images without a caption (or the ones named);
    returns it and how many images it captions. Refuses where captions are off or nothing is left."""
    svc.sessions.require(session, actor, "contribute")
    if not kinds.get(session.kind).captioned:
        raise Refusal("Only image sessions have captions.")
    model = svc.server.caption_model(session.guild_id)
    if model is None:
        raise Refusal(f"A server manager switched automatic captions off on this server. Images without a caption "
                      f"train on the instance prompt “{svc.data.instance_prompt()}”; write captions with "
                      f"`/data captions` (Edit).")
    items = svc.data.to_caption(session, item_ids)
    if not items:
        raise Refusal("Every image has a caption already: review them with `/data captions`, or re-caption one "
                      "from there.")
    busy = [j for j in svc.jobs.find(unfinished=True) if j.kind == "caption" and j.config.get("session") == session.id]
    if busy:
        raise Refusal(f"Job #{busy[0].id} is captioning this session's images already; wait for it to end.")
    config = {"model": model, "trigger": svc.data.trigger(), "max_tokens": svc.data.caption_tokens(session),
              "items": [{"id": i.id, "blob": i.blob_hash, "filename": i.filename} for i in items],
              "session": session.id, "channel": channel_id, "requested_by": actor.user_id}
    return svc.jobs.submit("caption", config), len(items)


def caption_outcome(svc: Services, job: Job) -> str:
    """Store a finished ``caption`` job's captions and say in the thread what happened."""
    prompt = svc.data.instance_prompt()
    fallback = f"Images without a caption train on the instance prompt “{prompt}”, as before"
    if job.status == "cancelled":
        return f"Captioning (job #{job.id}) was cancelled. {fallback}."
    if job.status != "done":
        return f"Captioning (job #{job.id}) failed: {job.error or 'no reason given'}. {fallback}."
    answer = job.result.get("captions") or {}
    if answer.get("unavailable"):
        return (f"No captioning model on the worker: {answer['unavailable']}. {fallback}; write captions "
                f"yourself with `/data captions` (Edit), or ask a server manager to choose a model the "
                f"workers have (`/server settings caption_model:`).")
    stored = svc.data.store_model_captions(job.config.get("session"), answer.get("captions") or [], answer.get("model"))
    kept = len(job.config.get("items") or []) - len(stored)
    note = f" ({kept} kept the caption a member wrote meanwhile)" if kept else ""
    return (f"🏷️ {len(stored)} image(s) captioned by `{model_name(answer.get('model'))}`{note}: review and edit them with "
            f"`/data captions`.")


# ---- the pager
def caption_embed(session: Session, items: list[DatasetItem], index: int, prompt: str) -> discord.Embed:
    item = items[index]
    source = caption_source(item)
    counts = {s: 0 for s in SOURCES}
    for i in items:
        counts[caption_source(i)] += 1
    embed = discord.Embed(title=f"Caption {index + 1} of {len(items)} · #{item.id} `{item.filename}`",
                          description=item.caption or f"*(no caption: trains on “{prompt}”)*", colour=0x5865F2)
    embed.add_field(name="Source", value=source + (f" (`{model_name(item.checks.get('caption_model'))}`)"
                                                   if source == "model" and item.checks.get("caption_model") else ""))
    embed.add_field(name="Uploaded by", value=f"<@{item.uploader_id}>" if item.uploader_id else "–")
    embed.set_footer(text="Session #{} · {}".format(session.id, ", ".join(f"{n} {s}" for s, n in counts.items() if n)))
    embed.set_image(url="attachment://image.png")
    return embed


class CaptionPager(discord.ui.View):
    """One image at a time: its caption and source; Previous, Next, Edit (a modal) and Re-caption."""

    def __init__(self, cog, session: Session, owner_id: int, index: int = 0):
        super().__init__(timeout=900)
        self.cog, self.session, self.owner_id, self.index = cog, session, owner_id, index

    @property
    def svc(self) -> Services:
        return self.cog.bot.services

    async def page(self) -> tuple[discord.Embed, discord.File]:
        """The embed and image of the current item (items are read again: edits show at once)."""
        items = await self.cog.bot.db(self.svc.data.items, self.session)
        if not items:
            raise Refusal("The dataset is empty now.")
        self.index %= len(items)
        self.item = items[self.index]
        data = await self.cog.bot.db(self.svc.blobs.get_bytes, self.item.blob_hash)
        return (caption_embed(self.session, items, self.index, self.svc.data.instance_prompt()),
                discord.File(io.BytesIO(data), "image.png"))

    async def show(self, interaction: discord.Interaction) -> None:
        embed, image = await self.page()
        await interaction.response.edit_message(embed=embed, attachments=[image], view=self)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            await interaction.response.send_message("This pager is someone else's: open your own with "
                                                    "`/data captions`.", ephemeral=True)
            return False
        return True

    @discord.ui.button(label="Previous", emoji="◀", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.index -= 1
        await guarded(interaction, self.show(interaction))

    @discord.ui.button(label="Next", emoji="▶", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.index += 1
        await guarded(interaction, self.show(interaction))

    @discord.ui.button(label="Edit", emoji="✏", style=discord.ButtonStyle.primary)
    async def edit(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await guarded(interaction, self._edit(interaction))

    async def _edit(self, interaction: discord.Interaction) -> None:
        await self.page()
        await interaction.response.send_modal(CaptionModal(self, self.item))

    @discord.ui.button(label="Re-caption", emoji="🔁", style=discord.ButtonStyle.secondary)
    async def recaption(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await guarded(interaction, self._recaption(interaction))

    async def _recaption(self, interaction: discord.Interaction) -> None:
        from .client import actor_of

        await self.page()
        submitted, _ = await self.cog.bot.db(request_captions, self.svc, self.session, actor_of(interaction),
                                             item_ids=[self.item.id], channel_id=interaction.channel_id)
        await interaction.response.send_message(f"Re-captioning #{self.item.id} (job #{submitted.job.id}); the thread "
                                                f"hears when it is done.", ephemeral=True)


class CaptionModal(discord.ui.Modal, title="Edit the caption"):
    def __init__(self, pager: CaptionPager, item: DatasetItem):
        super().__init__(timeout=600)
        self.pager, self.item_id = pager, item.id
        self.caption = discord.ui.TextInput(custom_id="caption", default=item.caption or "", required=True,
                                            max_length=1000, style=discord.TextStyle.paragraph)
        self.add_item(discord.ui.Label(text=f"Caption of #{item.id}",
                                       description="Start with the trigger word; this caption is yours from now on",
                                       component=self.caption))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        from .client import actor_of

        bot, svc = self.pager.cog.bot, self.pager.svc
        try:
            edit = await bot.db(svc.data.edit_caption, self.pager.session, actor_of(interaction), self.item_id,
                                self.caption.value)
        except UserError as exc:
            await interaction.client.refuse(interaction, str(exc))
            return
        lines = [f"Caption of #{self.item_id} saved (source: member): “{edit.caption}”", *edit.notes]
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

