"""/help, command descriptions, the commands table (docs/commands.md and the README), and the
refusals of /sample and /adapter export before any adapter exists."""

from __future__ import annotations

import re
from pathlib import Path

import discord
import pytest

from bot.cogs.help import command_rows, commands_table
from tests.bot_world import *  # noqa: F401,F403

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[1]


async def test_help_lists_the_steps_and_every_command(world):
    result = await world.alice.slash(world.channel, "help")
    assert result.ephemeral
    embed = result.response.embeds[0]
    assert embed.description.startswith("1. `/session new`")
    text = "\n".join(f.value for f in embed.fields)
    for name, _ in command_rows(world.env.bot.tree):
        assert f"`{name}`" in text


async def test_every_command_and_option_has_a_description(world):
    tree = world.env.bot.tree
    assert len(command_rows(tree)) >= 20
    for command in tree.walk_commands():
        assert command.description and command.description != "…", command.qualified_name
        if isinstance(command, discord.app_commands.Command):
            for parameter in command.parameters:
                assert parameter.description and parameter.description != "…", (command.qualified_name, parameter.name)


async def test_docs_commands_md_holds_the_current_table(world):
    table = commands_table(world.env.bot.tree)
    assert (ROOT / "docs" / "commands.md").read_text(encoding="utf-8").endswith(table), \
        "docs/commands.md is stale: regenerate it with bot.cogs.help.commands_table"


async def test_every_command_appears_in_the_readmes_table(world):
    readme = (ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else ""
    listed = set(re.findall(r"^\| `(/[a-z ]+)` \|", readme, flags=re.MULTILINE))
    missing = [name for name, _ in command_rows(world.env.bot.tree) if name not in listed]
    assert not missing, f"README.md's command table lacks {missing}: paste docs/commands.md's table into it"


async def test_sample_and_export_need_a_trained_adapter(world):
    await world.alice.slash(world.channel, "session new", kind="text", title="Nothing yet")
    thread = world.channel.threads[-1]
    sample = await world.alice.slash(thread, "sample", prompt="hello")
    assert sample.ephemeral and "No trained adapter here yet: start a run with `/train start`." == sample.response.content
    export = await world.alice.slash(thread, "adapter export", job=7)
    assert export.ephemeral and "Job #7 is not one of this session's jobs" in export.response.content
