"""``/session``: a training session is a thread with a kind, a base model, an owner and contributors."""

from __future__ import annotations

from typing import Literal, Optional

import discord
from discord import app_commands
from discord.ext import commands

from storage.db import Session
from trainer import kinds
from trainer.kinds import IMAGE

from ..client import LoracordBot, actor_of
from ..display import model_name
from ..options import Setting
from ..report import size_line
from ..services import Actor, Refusal, Services

KindName = Literal[kinds.names()]  # the kinds of run (trainer.kinds)


# ---- the rules of a session (on the bot's database thread)
def check_model(svc: Services, guild_id: int, kind: str, base_model: str | None) -> str:
    """The base a session of ``kind`` trains: the one named (a local folder may be named by its
    folder's name) when the server allows it, else the server's first of that kind."""
    if kind not in kinds.KINDS:
        raise Refusal(f"A session is {kinds.choices()}, not {kind!r}.")
    allowed = svc.server.allowed_models(guild_id, kind)
    if not allowed:
        raise Refusal(f"This server allows no {kind} base models yet: a server manager can add some with "
                      f"`/server settings allowed_models:`.")
    if base_model is None:
        return allowed[0]
    by_name = [m for m in allowed if model_name(m) == base_model]  # members see local folders by name
    if base_model not in allowed and len(by_name) == 1:
        return by_name[0]
    if base_model not in allowed:
        raise Refusal(f"`{model_name(base_model)}` is not one of this server's {kind} models: pick one of "
                      + ", ".join(f"`{model_name(m)}`" for m in allowed) + ".")
    return base_model


def new_session(svc: Services, *, guild_id: int, actor: Actor, kind: str, base_model: str | None, visibility: str,
                title: str, thread_id: int) -> Session:
    base = check_model(svc, guild_id, kind, base_model)
    return svc.sessions.create(guild_id=guild_id, owner=actor, kind=kind, base_model=base, visibility=visibility,
                               title=title, thread_id=thread_id)


def join_session(svc: Services, session: Session, actor: Actor) -> str:
    role = svc.sessions.role(session, actor)
    if role in ("owner", "editor"):
        raise Refusal("You are already a contributor of this session.")
    if session.status != "open":
        raise Refusal(f"This session is {session.status}; it takes no new contributors.")
    if session.visibility == "private" and role != "viewer" and not actor.manager:
        raise Refusal(f"This session is private: ask its owner <@{session.owner_id}> to invite you "
                      f"with `/session settings invite:`.")
    svc.sessions.add_member(session, actor.user_id, "editor")
    return "editor"


def leave_session(svc: Services, session: Session, actor: Actor) -> None:
    role = svc.sessions.role(session, actor)
    if role is None:
        raise Refusal("You are not a member of this session.")
    if role == "owner":
        raise Refusal("The owner cannot leave their session: `/session close` ends it, `/session delete` removes it.")
    svc.sessions.remove_member(session, actor.user_id)


def session_info(svc: Services, session: Session) -> dict:
    """What ``/session info`` shows: members, dataset size, jobs and adapters."""
    items = svc.data.items(session)
    return {"session": session, "members": svc.sessions.members(session), "items": len(items),
            "examples": svc.data.examples(items),
            "jobs": svc.jobs.find(session=session), "adapters": svc.jobs.adapters(session)}


def end_session(svc: Services, session: Session, actor: Actor, *, delete: bool = False) -> Session:
    """Close a session (or delete it): its owner or a manager; its queued and running jobs are cancelled."""
    svc.sessions.require(session, actor, "manage")
    for job in svc.jobs.find(session=session, unfinished=True):
        svc.jobs.cancel(job.id)
    if not delete:
        return svc.sessions.update(session, status="closed")
    # storage has no delete_session yet: the row stays, marked deleted, and its thread goes.
    return svc.sessions.update(session, status="deleted", thread_id=None)


def update_session(svc: Services, session: Session, actor: Actor, *, visibility: str | None = None,
                   title: str | None = None, base_model: str | None = None,
                   invite: int | None = None, remove: int | None = None) -> Session:
    """Change the session's settings and members (its owner or a manager)."""
    svc.sessions.require(session, actor, "manage")
    changes = {}
    if visibility is not None:
        changes["visibility"] = visibility
    if title is not None:
        changes["title"] = title
    if base_model is not None:
        changes["base_model"] = check_model(svc, session.guild_id, session.kind, base_model)
    if invite is not None and svc.sessions.role(session, Actor(invite)) is None:
        svc.sessions.add_member(session, invite, "viewer")
    if remove is not None:
        if remove == session.owner_id:
            raise Refusal("The owner cannot be removed from their own session.")
        svc.sessions.remove_member(session, remove)
    return svc.sessions.update(session, **changes)


async def model_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    bot: LoracordBot = interaction.client
    kind = getattr(interaction.namespace, "kind", None)
    if kind is None and interaction.channel_id:
        session = await bot.db(bot.services.sessions.in_channel, interaction.channel_id)
        kind = session.kind if session else kinds.DEFAULT.name
    models = await bot.db(bot.services.server.allowed_models, interaction.guild_id, kind or kinds.DEFAULT.name)
    return [app_commands.Choice(name=model_name(m)[:100], value=m[:100]) for m in models
            if current.lower() in m.lower()][:25]


def session_embed(info: dict) -> discord.Embed:
    s = info["session"]
    embed = discord.Embed(title=f"Session #{s.id}: {s.title or 'untitled'}", colour=0x5865F2)
    embed.add_field(name="Kind", value=s.kind)
    embed.add_field(name="Base model", value=f"`{model_name(s.base_model)}`")
    embed.add_field(name="Visibility", value=s.visibility)
    embed.add_field(name="Status", value=s.status)
    embed.add_field(name="Owner", value=f"<@{s.owner_id}>")
    contributors = [f"<@{m.user_id}>" for m in info["members"] if m.role == "editor"]
    invited = [f"<@{m.user_id}>" for m in info["members"] if m.role == "viewer"]
    embed.add_field(name="Contributors", value=", ".join(contributors) or "none yet")
    if invited:
        embed.add_field(name="Invited", value=", ".join(invited))
    embed.add_field(name="Dataset", value=f"{info['items']} file(s), {info['examples']} example(s)")
    jobs = info["jobs"]
    embed.add_field(name="Jobs", value=", ".join(f"#{j.id} {j.status}" for j in jobs[:5]) or "none yet")
    embed.add_field(name="Adapters", value=str(len(info["adapters"])))
    embed.add_field(name="Next", value=next_step(info), inline=False)
    return embed


def next_step(info: dict) -> str:
    s = info["session"]
    if s.status != "open":
        return f"This session is {s.status}."
    if not info["items"]:
        return f"Add data with `/data add`: {kinds.get(s.kind).first_step}."
    if not info["jobs"]:
        return "Check the data with `/data report`, then `/train start`."
    if info["adapters"]:
        return "Try prompts with `/sample`, vote on samples, `/adapter export` to download."
    return "Follow the job with `/train status`."


class SessionCog(commands.GroupCog, group_name="session", group_description="Training sessions: one thread per model"):
    def __init__(self, bot: LoracordBot):
        self.bot = bot
        self.svc = bot.services

    @app_commands.command(name="new", description="Start a training session in a new thread of this channel")
    @app_commands.describe(kind="What the model makes: images or text",
                           title="The thread's name (default: “<your name>'s <kind> session”; "
                                 "/session settings changes it)",
                           base_model="The pretrained model to fine-tune (this server's allowed list)",
                           visibility="public: anyone may join; private: by invitation")
    @app_commands.autocomplete(base_model=model_autocomplete)
    @app_commands.guild_only()
    async def new(self, interaction: discord.Interaction, kind: KindName,
                  title: Optional[app_commands.Range[str, 1, 90]] = None, base_model: Optional[str] = None,
                  visibility: Literal["public", "private"] = "public") -> None:
        channel = interaction.channel
        named = bool(title)
        title = title or f"{interaction.user.display_name}'s {kind} session"[:90]
        if not isinstance(channel, discord.TextChannel):
            await self.bot.refuse(interaction, "Start a session from a text channel (not a thread or a DM): "
                                               "the bot opens a thread there.")
            return
        base = await self.bot.db(check_model, self.svc, interaction.guild_id, kind, base_model)
        here = None if self.bot.config.session_threads else await self.bot.db(self.svc.sessions.in_channel, channel.id)
        if here is not None:
            await self.bot.refuse(interaction, f"{channel.mention} holds session #{here.id} already, and here each "
                                               f"session keeps its channel. `/session delete confirm:True` frees it.")
            return
        await interaction.response.defer(thinking=True)
        # A private session lives in a private thread: only invited members see it at all.
        private = visibility == "private"
        if not self.bot.config.session_threads:
            thread = channel  # the session lives where it was started (the offline playground shows one channel)
        else:
            thread = await channel.create_thread(
                name=title, auto_archive_duration=10080, invitable=False if private else None,
                type=discord.ChannelType.private_thread if private else discord.ChannelType.public_thread)
            if private:
                await thread.add_user(interaction.user)
        session = await self.bot.db(new_session, self.svc, guild_id=interaction.guild_id, actor=actor_of(interaction),
                                    kind=kind, base_model=base, visibility=visibility, title=title, thread_id=thread.id)
        await interaction.followup.send(f"Started {visibility} {kind} session #{session.id} on `{model_name(base)}`: "
                                        f"{thread.mention}")
        who = "anyone can `/session join`" if visibility == "public" else "invite members with `/session settings invite:`"
        welcome = f"Welcome to **{title}**, " if named else "Welcome to "  # a default title says the same twice
        await thread.send(f"{welcome}{interaction.user.mention}'s {kind} session on `{model_name(base)}` "
                          f"({who}).\n"
                          f"**Step 1:** {kinds.get(kind).first_step} with `/data add`"
                          + (" or by posting the files here" if self.bot.intents.message_content else "")
                          + ".\n**Step 2:** `/data report` grades the data and picks a preset.\n"
                          "**Step 3:** `/train start`, then `/sample` and vote.")

    @app_commands.command(name="join", description="Become a contributor of this thread's session")
    async def join(self, interaction: discord.Interaction) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        await self.bot.db(join_session, self.svc, session, actor_of(interaction))
        await interaction.response.send_message(
            f"{interaction.user.mention} joined session #{session.id} as a contributor. "
            f"**Next:** add your data with `/data add`.")

    @app_commands.command(name="leave", description="Stop contributing to this thread's session")
    async def leave(self, interaction: discord.Interaction) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        await self.bot.db(leave_session, self.svc, session, actor_of(interaction))
        await interaction.response.send_message(f"You left session #{session.id}; your uploads stay in its dataset.",
                                                ephemeral=True)

    @app_commands.command(name="info", description="Show this thread's session: model, members, data, jobs, next step")
    async def info(self, interaction: discord.Interaction) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        info = await self.bot.db(session_info, self.svc, session)
        await interaction.response.send_message(embed=session_embed(info))

    @app_commands.command(name="list", description="List this server's training sessions")
    @app_commands.guild_only()
    async def list_(self, interaction: discord.Interaction) -> None:
        actor = actor_of(interaction)

        def visible():  # a private session is nobody else's business: listed to its members and managers only
            return [s for s in self.svc.sessions.in_server(interaction.guild_id)
                    if s.visibility != "private" or actor.manager or self.svc.sessions.role(s, actor) is not None]

        sessions = await self.bot.db(visible)
        if not sessions:
            await interaction.response.send_message("No sessions yet: start one with `/session new`.", ephemeral=True)
            return
        lines = [f"#{s.id} <#{s.thread_id}> · {s.kind} · `{model_name(s.base_model)}` · {s.visibility} · {s.status} · "
                 f"owner <@{s.owner_id}>"
                 for s in sessions[-25:]]
        embed = discord.Embed(title="Training sessions", description="\n".join(lines), colour=0x5865F2)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="close", description="Close this session: no more data or training (owner or manager)")
    async def close(self, interaction: discord.Interaction) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        await self.bot.db(end_session, self.svc, session, actor_of(interaction))
        await interaction.response.send_message(f"Session #{session.id} is closed. Its adapters stay available: "
                                                f"`/adapter export`, `/sample`.")

    @app_commands.command(name="delete", description="Delete this session and its thread (owner or manager)")
    @app_commands.describe(confirm="Set to True to really delete the session and its thread")
    async def delete(self, interaction: discord.Interaction, confirm: bool = False) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        await self.bot.db(self.svc.sessions.require, session, actor_of(interaction), "manage")
        if not confirm:
            await self.bot.refuse(interaction, "This deletes the session and its thread for everyone. "
                                               "Run `/session delete confirm:True` to go ahead.")
            return
        await self.bot.db(end_session, self.svc, session, actor_of(interaction), delete=True)
        await interaction.response.send_message(f"Session #{session.id} deleted.", ephemeral=True)
        if isinstance(interaction.channel, discord.Thread):  # a session kept in a channel leaves the channel be
            await interaction.channel.delete()

    @app_commands.command(name="settings", description="Change this session: visibility, title, model, members (owner or manager)")
    @app_commands.describe(visibility="public: anyone may join; private: by invitation", title="A new thread name",
                           base_model="Another allowed base model for the next runs",
                           invite="Invite a member to this (private) session", remove="Remove a member from the session",
                           resolution="Image sessions: training and sample side in pixels for the next runs",
                           batch_size="Image sessions: images per step", sample_steps="Image sessions: denoising "
                                                                                       "steps per sample",
                           quantize="Next runs' frozen base in 4bit/8bit (QLoRA); auto: only where it would not fit")
    @app_commands.autocomplete(base_model=model_autocomplete)
    async def settings(self, interaction: discord.Interaction, visibility: Optional[Literal["public", "private"]] = None,
                       title: Optional[app_commands.Range[str, 1, 90]] = None, base_model: Optional[str] = None,
                       invite: Optional[discord.Member] = None, remove: Optional[discord.Member] = None,
                       resolution: Setting["resolution"] = None, batch_size: Setting["batch_size", IMAGE] = None,
                       sample_steps: Setting["sample_steps"] = None, quantize: Setting["quantize"] = None) -> None:
        session = await self.bot.db(self.svc.sessions.session_here, interaction.channel_id)
        await self.bot.db(self.svc.server.set_session_run_defaults, session, actor_of(interaction), quantize=quantize)
        await self.bot.db(self.svc.sizes.set_session_sizes, session, actor_of(interaction),
                          resolution=resolution, batch_size=batch_size, sample_steps=sample_steps)
        updated = await self.bot.db(update_session, self.svc, session, actor_of(interaction), visibility=visibility,
                                    title=title, base_model=base_model, invite=invite and invite.id,
                                    remove=remove and remove.id)
        if isinstance(interaction.channel, discord.Thread):
            if title:
                await interaction.channel.edit(name=title)
            if invite and interaction.channel.type is discord.ChannelType.private_thread:
                await interaction.channel.add_user(invite)
            if remove and interaction.channel.type is discord.ChannelType.private_thread:
                await interaction.channel.remove_user(remove)
        notes = []
        if invite:
            notes.append(f"{invite.mention} is invited: they can `/session join` now.")
        if remove:
            notes.append(f"{remove.mention} was removed.")
        if quantize:
            notes.append(f"Runs here load the base with quantize {quantize} unless `/train start quantize:` says otherwise.")
        if kinds.get(updated.kind).sized_to_device:
            notes.append(size_line(await self.bot.db(self.svc.sizes.image_sizes, updated)) + ".")
        info = await self.bot.db(session_info, self.svc, updated)
        await interaction.response.send_message("Session updated. " + " ".join(notes), embed=session_embed(info))


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(SessionCog(bot))
