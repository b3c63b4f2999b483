"""``/help``: the path from first upload to a posted adapter, and every command."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from ..client import LoracordBot

def steps(*, threads: bool = True, posted_files: bool = True) -> str:
    """The path from first upload to a posted adapter. ``threads``: each session opens a thread
    (else it lives in the channel where it started); ``posted_files``: files posted in a session's
    thread are read (the message-content intent)."""
    where = ("in a channel opens a thread for your model" if threads
             else "starts a session for your model in this channel (one session per channel)")
    post = " (or post them in the thread)" if threads and posted_files else ""
    return (f"1. `/session new` {where} (text or image).\n"
            f"2. `/data add` your files there{post}; others `/session join` and add theirs.\n"
            "3. `/data report` grades the data and picks a preset.\n"
            "4. `/train start` (or `/train tune` for quick tries) and watch the progress message.\n"
            "5. Vote 👍/👎 on the samples, `/sample` your own prompts, `/adapter export` to download.")


def command_rows(tree: app_commands.CommandTree) -> list[tuple[str, str]]:
    """``("/group sub", description)`` for every slash command in ``tree``, in order."""
    rows = []

    def walk(command) -> None:
        if isinstance(command, app_commands.Group):
            for child in command.commands:
                walk(child)
        else:
            rows.append((f"/{command.qualified_name}", command.description))

    for command in tree.get_commands(type=discord.AppCommandType.chat_input):
        walk(command)
    return rows


def commands_table(tree: app_commands.CommandTree) -> str:
    """The Markdown table of docs/commands.md (and the README)."""
    lines = ["| Command | What it does |", "| --- | --- |"]
    lines += [f"| `{name}` | {description} |" for name, description in command_rows(tree)]
    return "\n".join(lines) + "\n"


def options_table(tree: app_commands.CommandTree, name: str) -> str:
    """The Markdown table of one command's options (docs/commands.md): each option's values (its
    range or choices, as Discord enforces them) and description, as the command declares them."""
    command = next(c for c in tree.walk_commands() if c.qualified_name == name)
    lines = ["| Option | Values | What it sets |", "| --- | --- | --- |"]
    for p in command.parameters:
        if p.choices:
            values = ", ".join(str(c.value) for c in p.choices)
        elif p.min_value is not None or p.max_value is not None:
            values = f"{p.min_value:g} to {p.max_value:g}" if p.max_value is not None else f"{p.min_value:g} or more"
        else:
            values = p.type.name
        lines.append(f"| `{p.name}` | {values} | {p.description} |")
    return "\n".join(lines) + "\n"


class HelpCog(commands.Cog):
    def __init__(self, bot: LoracordBot):
        self.bot = bot

    @app_commands.command(name="help", description="How training works here, step by step, and every command")
    async def help(self, interaction: discord.Interaction) -> None:
        config = self.bot.config
        embed = discord.Embed(title="loracord: train a LoRA on a few files, together", colour=0x5865F2,
                              description=steps(threads=config.session_threads, posted_files=config.message_content))
        rows = command_rows(self.bot.tree)
        text = "\n".join(f"`{name}`: {description}" for name, description in rows)
        for i, chunk in enumerate(_chunks(text, 1024)):
            embed.add_field(name="Commands" if i == 0 else "\u200b", value=chunk, inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)


def _chunks(text: str, size: int) -> list[str]:
    chunks, current = [], ""
    for line in text.splitlines():
        if len(current) + len(line) + 1 > size:
            chunks.append(current)
            current = ""
        current += line + "\n"
    return chunks + [current] if current else chunks


async def setup(bot: LoracordBot) -> None:
    await bot.add_cog(HelpCog(bot))
