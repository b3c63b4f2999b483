"""Each training setting is declared once (``trainer.config`` and the kinds' configs), and every
edge reads that declaration: these tests fail on any drift of a slash option, a CLI option or
docs/commands.md from it."""

from __future__ import annotations

from pathlib import Path

import discord.utils
import pytest
import typer.main

from bot.cogs.help import options_table
from bot.options import choices, declared, description
from loracord.cli import app
from tests.bot_world import *  # noqa: F401,F403
from trainer import kinds
from trainer.config import TrainConfig, bounds
from trainer.kinds import IMAGE

ROOT = Path(__file__).resolve().parents[1]
START = ("steps", "lr", "rank", "seed", "resolution", "sample_steps", "text_kind", "lr_scheduler", "dora", "quantize", "crop")
# slash command -> option -> (setting, the kind whose declaration it reads)
SETTING_OPTIONS = {
    "train start": {name: (name, None) for name in START},
    "session settings": {"resolution": ("resolution", None), "batch_size": ("batch_size", IMAGE),
                         "sample_steps": ("sample_steps", None), "quantize": ("quantize", None)},
    "server settings": {"image_resolution": ("resolution", None), "image_batch_size": ("batch_size", IMAGE),
                        "image_sample_steps": ("sample_steps", None), "quantize": ("quantize", None)},
}
NARROWER = {"train tune": {"steps": ("steps", None)}}  # quick tries from Discord stay quick, inside the declaration
# Settings each kind declares for itself, because they differ in default, bounds or meaning.
PER_KIND = {"data", "base", "batch_size", "val_fraction"}


def test_a_shared_setting_is_declared_once_in_the_base_config():
    own = [set(kind.config_class.__annotations__) for kind in kinds.KINDS.values()]
    for names in own:
        assert not names & set(TrainConfig.model_fields), "a kind redeclares a shared setting"
    assert set.intersection(*own) == PER_KIND, "a setting both kinds take belongs in TrainConfig"


def parameters(tree, name):
    return {p.name: p for p in next(c for c in tree.walk_commands() if c.qualified_name == name).parameters}


@pytest.mark.asyncio
async def test_slash_options_have_the_declared_ranges_choices_and_words(world):
    tree = world.env.bot.tree
    for command, options in {**SETTING_OPTIONS, **NARROWER}.items():
        found = parameters(tree, command)
        for option, (setting, kind) in options.items():
            field, param = declared(setting, kind), found[option]
            low, high = bounds(field)
            if command in NARROWER:
                assert low <= param.min_value and param.max_value <= high, (command, option)
            else:
                assert (param.min_value, param.max_value) == (low, high), (command, option)
            assert [c.value for c in param.choices] == list(choices(field) or []), (command, option)
            if command == "train start":  # as discord.py shows it: cut at Discord's 100 characters
                assert param.description == discord.utils._shorten(description(setting)), option
    assert set(parameters(tree, "train start")) == {"preset", *START}


@pytest.mark.asyncio
async def test_docs_commands_md_holds_the_current_train_start_options(world):
    table = options_table(world.env.bot.tree, "train start")
    assert table in (ROOT / "docs" / "commands.md").read_text(encoding="utf-8"), \
        "docs/commands.md is stale: regenerate /train start's table with bot.cogs.help.options_table"


@pytest.mark.parametrize("kind", kinds.KINDS.values(), ids=kinds.names())
def test_each_cli_option_is_a_setting_with_its_declared_words(kind):
    command = typer.main.get_command(app).commands["train"].commands[kind.name]
    options = {p.name: p for p in command.params}
    for name, field in kind.config_class.model_fields.items():
        assert name in options, f"loracord train {kind.name} lacks --{name.replace('_', '-')}"
        assert options[name].help.startswith(field.description), name
    assert set(options) == set(kind.config_class.model_fields)


@pytest.mark.asyncio
async def test_no_description_a_member_reads_is_cut_short(world):
    """Discord takes 100 characters a description; discord.py cuts longer ones with an ellipsis."""
    cut = [(command.qualified_name, p.name) for command in world.env.bot.tree.walk_commands()
           for p in getattr(command, "parameters", []) if str(p.description).endswith("…")]
    cut += [(command.qualified_name, "") for command in world.env.bot.tree.walk_commands()
            if str(command.description).endswith("…")]
    assert not cut, cut
