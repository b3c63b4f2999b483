"""The README documents every command of the CLI, and its two commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from loracord.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def cli_commands(group=None, prefix="loracord") -> list[str]:
    click_group = typer.main.get_command(app) if group is None else group
    names = []
    for name, command in click_group.commands.items():
        if hasattr(command, "commands"):
            names += cli_commands(command, f"{prefix} {name}")
        else:
            names.append(f"{prefix} {name}")
    return names


def test_every_cli_command_is_in_the_readme_table():
    rows = re.findall(r"^\| `(loracord [^`]*)` \|", README, flags=re.MULTILINE)
    documented = set()
    for row in rows:
        # "loracord jobs list\|cancel" documents both subcommands; arguments (DATA, RUN) end a row
        words = []
        for word in row.replace("\\|", "|").split():
            if not re.fullmatch(r"[a-z|]+", word):
                break
            words.append(word.split("|"))
        expanded = [[]]
        for alternatives in words:
            expanded = [done + [alt] for done in expanded for alt in alternatives]
        documented.update(" ".join(e[:n]) for e in expanded for n in range(2, len(e) + 1))
    missing = [c for c in cli_commands() if c not in documented]
    assert not missing, f"README's command table lacks {missing}"


def test_the_two_commands_exist_and_ci_calls_the_test_command():
    assert "bash scripts/run.sh" in README and "bash scripts/test.sh" in README
    assert (ROOT / "scripts" / "run.sh").exists() and (ROOT / "scripts" / "test.sh").exists()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
