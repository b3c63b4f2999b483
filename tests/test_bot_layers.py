"""The bot's layers: each cog owns its feature, and only the small shared services reach storage.

Read from the source with ``ast``: a cog, the client or the job picker that names ``.db`` (other
than calling the bot's database thread, ``bot.db(fn, ...)``) or ``.queue`` reaches past the
services (``bot.services``). And no service grows back into one class of everything.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import bot.services
from bot.config import BotSettings
from storage.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CALLERS = sorted((ROOT / "bot" / "cogs").glob("*.py")) + [ROOT / "bot" / "client.py", ROOT / "bot" / "jobpick.py"]
STORAGE = ("db", "queue")  # the database, and the queue that writes it
MODULES = ("base", "data", "jobs", "samples", "server", "sessions", "sizes")
MAX_PUBLIC_METHODS = 15


def reaches_past_services(source: str) -> list[int]:
    """Lines of ``source`` that name ``X.db`` or ``X.queue``, except calls ``X.db(...)`` (the bot's database thread)."""
    tree = ast.parse(source)
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr in STORAGE
                  and not (node.attr == "db" and id(node) in called))


def test_the_check_sees_a_reach_past_the_services():
    source = ("async def f(self):\n"
              "    await self.bot.db(self.svc.sessions.session_here, 1)\n"  # the database thread: fine
              "    await self.bot.db(self.svc.db.get_session, 1)\n"
              "    pick(self.svc.db)\n"
              "    self.svc.queue.submit('x')\n")
    assert reaches_past_services(source) == [3, 4, 5]


def test_cogs_and_the_client_reach_storage_only_through_the_services():
    assert len(CALLERS) >= 9  # the cogs, the client, the job picker
    found = [f"{path.relative_to(ROOT)}:{line}: {path.read_text().splitlines()[line - 1].strip()}"
             for path in CALLERS for line in reaches_past_services(path.read_text())]
    assert found == [], "past the services (ask bot.services instead):\n" + "\n".join(found)


def service_classes() -> list[type]:
    """Every class defined in the ``bot.services`` package."""
    modules = [bot.services] + [getattr(bot.services, name) for name in MODULES]
    return sorted({cls for module in modules for _, cls in inspect.getmembers(module, inspect.isclass)
                   if cls.__module__.startswith("bot.services")}, key=lambda cls: cls.__qualname__)


def public_methods(cls: type) -> list[str]:
    """Public methods and properties of ``cls``, inherited ones included."""
    return [name for name, value in inspect.getmembers(cls) if not name.startswith("_")
            and (inspect.isfunction(value) or isinstance(inspect.getattr_static(cls, name), property))]


def test_the_package_is_the_services_it_lists():
    assert {p.stem for p in (ROOT / "bot" / "services").glob("*.py")} - {"__init__"} == set(MODULES)


@pytest.mark.parametrize("cls", service_classes(), ids=lambda cls: cls.__qualname__)
def test_no_service_is_a_class_of_everything(cls):
    methods = public_methods(cls)
    assert len(methods) <= MAX_PUBLIC_METHODS, f"{cls.__qualname__} has {len(methods)} public methods: {methods}"


def test_the_services_are_small_named_parts(tmp_path):
    services = bot.services.Services(Settings(_env_file=None, data_dir=tmp_path),
                                     BotSettings(_env_file=None, discord_token=""))
    parts = {name: type(value).__name__ for name, value in vars(services).items()
             if isinstance(value, bot.services.Service)}
    assert parts == {"server": "ServerSettings", "sessions": "Sessions", "sizes": "ImageSizing", "data": "Datasets",
                     "jobs": "Jobs", "samples": "Samples"}
