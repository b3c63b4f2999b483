"""Buttons that keep working after a restart: the job or sample id lives in the custom id.

``JobButton`` (Cancel, Sample again, Export), ``VoteButton`` and ``CompareButton`` are ``DynamicItem``s: discord.py
rebuilds them from the custom id of whatever message was clicked, so the bot registers the
classes at start-up (``LoracordBot.setup_hook``) and never has to remember a view object.
"""

from __future__ import annotations

import discord

from trainer.errors import UserError

JOB_LABELS = {"cancel": ("Cancel", discord.ButtonStyle.danger, "✖"),
              "sample": ("Sample again", discord.ButtonStyle.primary, "🎲"),
              "export": ("Export", discord.ButtonStyle.secondary, "📦")}


class JobButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lc:job:(?P<action>cancel|sample|export):(?P<job_id>\d+)"):
    def __init__(self, action: str, job_id: int):
        label, style, emoji = JOB_LABELS[action]
        super().__init__(discord.ui.Button(label=label, style=style, emoji=emoji, custom_id=f"lc:job:{action}:{job_id}"))
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match, /):
        return cls(match["action"], int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, interaction.client.on_job_button(interaction, self.action, self.job_id))


class VoteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lc:vote:(?P<sample_id>\d+):(?P<value>up|down)"):
    def __init__(self, sample_id: int, value: str, label: str | None = None):
        emoji = "👍" if value == "up" else "👎"
        super().__init__(discord.ui.Button(emoji=emoji, label=label, style=discord.ButtonStyle.secondary,
                                           custom_id=f"lc:vote:{sample_id}:{value}"))
        self.sample_id, self.value = sample_id, value

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match, /):
        return cls(int(match["sample_id"]), match["value"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, interaction.client.on_vote(interaction, self.sample_id, 1 if self.value == "up" else -1))


class CompareButton(discord.ui.DynamicItem[discord.ui.Button], template=r"lc:cmp:(?P<comparison_id>\d+):(?P<choice>a|b)"):
    def __init__(self, comparison_id: int, choice: str, count: int | None = None):
        label = f"{choice.upper()} is closer" + (f" ({count})" if count else "")
        super().__init__(discord.ui.Button(label=label, style=discord.ButtonStyle.primary,
                                           custom_id=f"lc:cmp:{comparison_id}:{choice}"))
        self.comparison_id, self.choice = comparison_id, choice

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match, /):
        return cls(int(match["comparison_id"]), match["choice"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, interaction.client.on_compare(interaction, self.comparison_id, self.choice))


async def guarded(interaction: discord.Interaction, work) -> None:
    """Button errors do not reach the tree's error handler: answer UserErrors here, ephemerally."""
    try:
        await work
    except UserError as exc:
        await interaction.client.refuse(interaction, str(exc))


def job_view(job_id: int, *, finished: bool, has_adapter: bool = False) -> discord.ui.View:
    """Cancel while a job runs; Sample again and Export once it left an adapter."""
    view = discord.ui.View(timeout=None)
    if not finished:
        view.add_item(JobButton("cancel", job_id))
    elif has_adapter:
        view.add_item(JobButton("sample", job_id))
        view.add_item(JobButton("export", job_id))
    return view


def compare_view(comparison_id: int, a: int = 0, b: int = 0) -> discord.ui.View:
    """'A is closer' / 'B is closer' under a pair; each shows how many members chose it."""
    view = discord.ui.View(timeout=None)
    view.add_item(CompareButton(comparison_id, "a", a))
    view.add_item(CompareButton(comparison_id, "b", b))
    return view


def vote_view(sample_id: int, score: int | None = None) -> discord.ui.View:
    """👍/👎 under a sample; once someone voted, the 👍 button shows the sample's score."""
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(sample_id, "up", None if score is None else f"score {score:+d}"))
    view.add_item(VoteButton(sample_id, "down"))
    return view
