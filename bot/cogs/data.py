"""``/data``: add files (options, a modal upload, or plain attachments in the thread), list, remove, report.

Uploads are downloaded at once (attachment URLs expire), checked off the event loop by the
trainer's own readers (``bot.ingest``), stored in the blob store, attributed to the uploader,
and answered with what was accepted and what was rejected, and why.
"""

from __future__ import annotations

import asyncio
from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from ..captions import CaptionPager, caption_outcome, request_captions
from ..client import LoracordBot, actor_of
from ..display import model_name, scrub_paths
from ..ingest import CheckResult, Rejected, accepted_extensions, check_uploads
from ..report import TARGETS, first_run, report_card
from ..sampling import no_pings
from ..services import Actor
from ..services.data import caption_source, examples_in
from trainer import kinds
from trainer.errors import UserError
from trainer.limits import MAX_FILE_BYTES

MAX_MODAL_FILES = 10


class UploadModal(discord.ui.Modal, title="Add files to the dataset"):
    def __init__(self, cog: "DataCog"):
        super().__init__(timeout=600)
        self.cog = cog
        self.files = discord.ui.FileUpload(custom_id="files", min_values=1, max_values=MAX_MODAL_FILES, required=True)
        self.caption = discord.ui.TextInput(custom_id="caption", required=False, max_length=500,
                                            style=discord.TextStyle.paragraph)
        self.add_item(discord.ui.Label(text="Files (up to 10)", component=self.files))
        self.add_item(discord.ui.Label(text="Caption (optional)", description="Used for images without their own caption",
                                       component=self.caption))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        try:
            await self.cog.ingest_interaction(interaction, list(self.files.values), self.caption.value or None)
        except UserError as exc:
            await interaction.client.refuse(interaction, str(exc))


def result_embed(kind: str, result: CheckResult, added: list, duplicates: list[str], total_examples: int,
                 advice: list[str] | None = None) -> discord.Embed:
    """The answer to an upload; ``total_examples`` and ``advice`` are about the whole dataset."""
    few, good, unit = TARGETS[kind]
    colour = 0x2ECC71 if added and not result.rejected else 0xE67E22 if added else 0xE74C3C
    embed = discord.Embed(title=f"Dataset: {len(added)} file(s) added, {len(result.rejected)} rejected", colour=colour)
    if added:
        lines = [f"#{i.id} `{i.filename}` · {i.checks.get('examples', 1)} example(s)" for i in added[:15]]
        embed.add_field(name="Accepted", value="\n".join(lines)[:1024], inline=False)
    if duplicates:
        embed.add_field(name="Already in the dataset", value=", ".join(f"`{d}`" for d in duplicates)[:1024], inline=False)
    if result.rejected:
        lines = [f"`{r.filename}`: {r.reason}" for r in result.rejected[:10]]
        embed.add_field(name="Rejected", value="\n".join(lines)[:1024], inline=False)
    if advice:
        embed.add_field(name="Advice", value="\n".join(f"• {a}" for a in advice[:3])[:1024], inline=False)
    if total_examples < few:
        nxt = f"add {few - total_examples} more {unit} (training needs {few})."
    elif total_examples < good:
        nxt = f"{total_examples} {unit} is enough to try: `/data report`, then `/train start`; {good}+ work better."
    else:
        nxt = f"{total_examples} {unit}: check them with `/data report`, then `/train start`."
    embed.add_field(name="Next", value=nxt, inline=False)
    return embed


class DataCog(commands.GroupCog, group_name="data", group_description="The session's dataset"):
    def __init__(self, bot: LoracordBot):
        self.bot = bot
        self.svc = bot.services

    # ---- shared upload path
    def _split_by_size(self, attachments: list[discord.Attachment], limit: int) -> tuple[list, list[Rejected]]:
        keep, rejected = [], []
        for a in attachments:
            if a.size > limit:
                rejected.append(Rejected(a.filename, f"{a.size / 2**20:.1f} MiB is over the {limit / 2**20:.2g} MiB "
                                                     f"limit per file; split it into smaller files"))
            else:
                keep.append(a)
        return keep, rejected

    async def ingest(self, session, actor: Actor, attachments: list[discord.Attachment], caption: str | None,
                     limit: int) -> discord.Embed:
        max_file_mb = await self.bot.db(self.svc.server.limit, session.guild_id, "max_file_mb")
        limit = min(limit, int(float(max_file_mb) * 2**20), MAX_FILE_BYTES)
        keep, too_big = self._split_by_size(attachments, limit)
        # URLs expire: download now. An attachment's description (its alt text) is its caption.
        uploads = [(a.filename, await a.read(), a.description) for a in keep]
        # Images are checked against the size the session trains at, by the trainer's own rule.
        sized = kinds.get(session.kind).sized_to_device
        sizes = await self.bot.db(self.svc.sizes.image_sizes, session) if sized else None
        result = await asyncio.to_thread(check_uploads, session.kind, uploads, self.svc.blobs, caption=caption,
                                         resolution=sizes and sizes.resolution)
        result.rejected[:0] = too_big
        cut = self.svc.data.fit_upload_captions(session, result)
        added, duplicates = await self.bot.db(self.svc.data.add_items, session, actor, result)
        items = await self.bot.db(self.svc.data.items, session)
        total, advice = self.svc.data.examples(items), []
        if kinds.get(session.kind).card_on_upload and items and added:
            # Advice about the dataset comes from the whole dataset (read as the trainer reads it),
            # not from this upload alone. Images are not re-decoded on every upload: `/data report` does that.
            card = await asyncio.to_thread(report_card, session.kind, items, self.svc.blobs)
            if card.problem:
                advice = [f"The dataset as a whole does not read yet: {card.problem} (`/data report` shows more)"]
            else:
                total = card.count
                advice = [a for a in card.advice if a != card.count_advice]
        return result_embed(session.kind, result, added, duplicates, total, ([cut] if cut and added else []) + advice)

    async def ingest_interaction(self, interaction: discord.Interaction, attachments: list[discord.Attachment],
                                 caption: str | None) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        await self.bot.db(self.svc.data.check_dataset_room, session, actor_of(interaction), len(attachments),
                          sum(a.size for a in attachments))
        await interaction.response.defer(thinking=True)
        embed = await self.ingest(session, actor_of(interaction), attachments, caption, interaction.filesize_limit)
        await interaction.followup.send(f"{interaction.user.mention}'s upload", embed=embed)

    # ---- commands
    @app_commands.command(name="add", description="Add files to the dataset (no files: opens an upload form)")
    @app_commands.describe(file="A file: .txt/.md/.jsonl/.csv for text, .png/.jpg/.webp for images, or a .zip",
                           file2="Another file", file3="Another file", file4="Another file", file5="Another file",
                           caption="Caption for the images in this upload (image sessions)")
    async def add(self, interaction: discord.Interaction, file: Optional[discord.Attachment] = None,
                  file2: Optional[discord.Attachment] = None, file3: Optional[discord.Attachment] = None,
                  file4: Optional[discord.Attachment] = None, file5: Optional[discord.Attachment] = None,
                  caption: Optional[app_commands.Range[str, 1, 500]] = None) -> None:
        attachments = [a for a in (file, file2, file3, file4, file5) if a is not None]
        if not attachments:
            session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
            await self.bot.db(self.svc.sessions.require, session, actor_of(interaction), "contribute")
            await interaction.response.send_modal(UploadModal(self))
            return
        await self.ingest_interaction(interaction, attachments, caption)

    @app_commands.command(name="list", description="List the dataset's files with their uploaders")
    async def list_(self, interaction: discord.Interaction) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        items = await self.bot.db(self.svc.data.items, session)
        if not items:
            await interaction.response.send_message("The dataset is empty: add files with `/data add`.", ephemeral=True)
            return
        captioned = kinds.get(session.kind).captioned
        lines = [f"#{i.id} `{i.filename}` · {examples_in(i)} ex. · {(i.size or 0) / 1024:.1f} KiB · "
                 f"<@{i.uploader_id}>" + (f" · {caption_source(i)}: “{i.caption[:40]}”" if i.caption else
                                          " · no caption" if captioned else "") for i in items]
        total = self.svc.data.examples(items)
        embed = discord.Embed(title=f"Dataset of session #{session.id}: {len(items)} file(s), {total} example(s)",
                              description="\n".join(lines)[:4000], colour=0x5865F2)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="captions", description="Review every image's caption and its source; "
                                                        "auto: caption the uncaptioned ones with a model")
    @app_commands.describe(auto="Caption the images without a caption with the server's captioning model")
    async def captions(self, interaction: discord.Interaction, auto: bool = False) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        if auto:
            submitted, count = await self.bot.db(request_captions, self.svc, session, actor_of(interaction),
                                                 channel_id=interaction.channel_id)
            model = model_name(submitted.job.config["model"])  # a folder by its name, never a host path
            await interaction.response.send_message(
                f"Captioning {count} image(s) without a caption with `{model}` (job #{submitted.job.id}), the "
                f"trigger word `{submitted.job.config['trigger']}` first. I'll say here when they are ready to "
                f"review with `/data captions`.")
            return
        if not kinds.get(session.kind).captioned:
            raise UserError("Only image sessions have captions: `/data list` shows this dataset.")
        pager = CaptionPager(self, session, interaction.user.id)
        embed, image = await pager.page()
        await interaction.response.send_message(embed=embed, file=image, view=pager, ephemeral=True)

    async def post_captions(self, job) -> None:
        """Store a finished ``caption`` job's captions and say in its thread what happened."""
        channel = self.bot.get_channel(job.config["channel"]) or await self.bot.fetch_channel(job.config["channel"])
        text = await self.bot.db(caption_outcome, self.svc, job)
        await channel.send(no_pings(scrub_paths(text))[:2000], allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="remove", description="Remove one file from the dataset (its uploader, owner or manager)")
    @app_commands.describe(item="The item number shown by /data list")
    async def remove(self, interaction: discord.Interaction, item: app_commands.Range[int, 1]) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        removed = await self.bot.db(self.svc.data.remove_item, session, actor_of(interaction), item)
        await interaction.response.send_message(f"Removed #{removed.id} `{removed.filename}` from the dataset.")

    @app_commands.command(name="report", description="Grade the dataset: counts, duplicates, sizes, captions, advice, preset")
    async def report(self, interaction: discord.Interaction) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        items = await self.bot.db(self.svc.data.items, session)
        sized = kinds.get(session.kind).sized_to_device
        sizes = await self.bot.db(self.svc.sizes.image_sizes, session) if sized else None
        await interaction.response.defer(thinking=True)
        done = await self.bot.db(self.svc.jobs.find, session=session, status="done")
        tuned = next((j.result.get("metrics") for j in done if j.kind == "tune"), None)
        last_run = next(((j.result or {}).get("metrics") for j in done if j.kind.startswith("train_")), None)
        config = self.bot.config
        run_defaults = await self.bot.db(self.svc.server.run_defaults, session)
        card = await asyncio.to_thread(report_card, session.kind, items, self.svc.blobs, sizes=sizes, tuned=tuned,
                                       settings={**config.train_defaults(session.kind), **run_defaults},
                                       last_run=last_run,
                                       posted_files=config.session_threads and config.message_content)
        embed = discord.Embed(title=f"Report card · session #{session.id} ({session.kind})",
                              description="\n".join(card.lines) or "No data yet.",
                              colour=0x2ECC71 if card.grade == "good" else 0xE67E22)
        if card.advice:
            embed.add_field(name="Advice", value="\n".join(f"• {a}" for a in card.advice)[:1024], inline=False)
        embed.add_field(name=f"Preset I would pick: {card.preset}", value=f"Because {card.preset_why}.", inline=False)
        ready = card.count >= TARGETS[session.kind][0]
        embed.add_field(name="Next", value=first_run(card.preset, self.bot.config.expected_device()) if ready else
                        f"add more with `/data add` ({', '.join(accepted_extensions(session.kind))})", inline=False)
        await interaction.followup.send(embed=embed)

    # ---- plain attachments in a session thread (needs the message-content intent)
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or not message.attachments or not isinstance(message.channel, discord.Thread):
            return
        session = await self.bot.db(self.svc.sessions.in_channel, message.channel.id)
        if session is None or session.status == "deleted":
            return
        perms = message.channel.permissions_for(message.author)
        actor = Actor(message.author.id, manager=perms.manage_guild or perms.administrator)
        try:
            await self.bot.db(self.svc.data.check_dataset_room, session, actor, len(message.attachments),
                              sum(a.size for a in message.attachments))
        except UserError as exc:
            await message.reply(f"I did not add these files: {exc}")
            return
        limit = message.guild.filesize_limit if message.guild else 10 * 2**20
        embed = await self.ingest(session, actor, list(message.attachments), message.content.strip() or None, limit)
        await message.reply(embed=embed)


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(DataCog(bot))
