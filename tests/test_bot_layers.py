"""The bot's layers: each cog owns its feature, and only the small shared services reach storage.

Read from the source with ``ast``: a cog, the client or the job picker that names ``.db`` (other
than calling the bot's database thread, ``bot.db(fn, ...)``) or ``.queue`` reaches past the
services (``bot.services``). And no service grows back into one class of everything. And no
code outside ``trainer/kinds.py`` branches on a run kind's name: it asks the kind's record.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import bot.services
from bot.config import BotSettings
from storage.settings import Settings
from trainer import kinds

ROOT = Path(__file__).resolve().parent.parent
CALLERS = sorted((ROOT / "bot" / "cogs").glob("*.py")) + [ROOT / "bot" / "client.py", ROOT / "bot" / "jobpick.py"]
STORAGE = ("db", "queue")  # the database, and the queue that writes it
MODULES = ("base", "comparisons", "data", "jobs", "samples", "server", "sessions", "sizes")
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
                     "jobs": "Jobs", "samples": "Samples", "comparisons": "Comparisons"}


# --------------------------------------------------------------------------------------------
# run kinds are records: nothing outside trainer/kinds.py compares or chooses by a kind's name

KIND_NAMES = set(kinds.names())
# Other things called "text" or "image" that code may compare: what a file is (trainer.filetypes:
# a sniffed ``found.kind``, a mime type's ``top`` part) and the shape of a text example (``example.kind``).
NOT_RUN_KINDS = {"found.kind", "top", "example.kind"}
KIND_SOURCES = [p for package in ("bot", "storage", "trainer", "loracord") for p in sorted((ROOT / package).rglob("*.py"))
                if p != ROOT / "trainer" / "kinds.py"]
# Left to the image families' rework under way there: the check of a run's kind before sampling it.
NOT_YET: set[tuple[str, str]] = set()  # (file, line) a change may leave for later, named here


def _kind_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in KIND_NAMES


def kind_name_branches(source: str) -> list[int]:
    """Lines of ``source`` that compare something with a run kind's name (``kind == "image"``,
    ``x in ("text", ...)``) or choose by one (``"image" if ... else "text"``), instead of asking
    the kind's record (``trainer.kinds``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for left, op, right in zip([node.left, *node.comparators], node.ops, node.comparators):
                if isinstance(op, (ast.Eq, ast.NotEq)) and (_kind_name(left) or _kind_name(right)):
                    other = right if _kind_name(left) else left
                elif isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, (ast.Tuple, ast.List, ast.Set)) \
                        and any(_kind_name(e) for e in right.elts):
                    other = left
                else:
                    continue
                if ast.unparse(other) not in NOT_RUN_KINDS:
                    found.add(node.lineno)
        elif isinstance(node, ast.IfExp) and _kind_name(node.body) and _kind_name(node.orelse):
            found.add(node.lineno)
    return sorted(found)


def test_the_check_sees_a_kind_name_branch():
    source = ("if kind == 'image':\n"
              "    pass\n"
              "library = 'diffusers' if (metrics or {}).get('kind') == 'image' else 'peft'\n"
              "if metrics.get('kind', 'text') != 'text' or session.kind in ('image',):\n"
              "    pass\n"
              "name = 'image' if path.endswith('.png') else 'text'\n"
              "if found.kind == 'image' and example.kind == 'text' and top == 'image':\n"  # not run kinds: fine
              "    pass\n"
              "if kinds.get(kind).makes_images and row['text'] and kind is not kinds.TEXT:\n"  # asks the record: fine
              "    pass\n"
              "if 'text' in columns or keys == {'text'} or 'text' in found.what:\n"  # a column, a key, a word: fine
              "    pass\n")
    assert kind_name_branches(source) == [1, 3, 4, 6]


def test_no_code_outside_the_kinds_branches_on_a_kind_name():
    assert len(KIND_SOURCES) > 60
    found = [f"{path.relative_to(ROOT)}:{line}: {path.read_text().splitlines()[line - 1].strip()}"
             for path in KIND_SOURCES for line in kind_name_branches(path.read_text())]
    left = [f for f in found if (f.split(":")[0], f.split(": ", 1)[1]) not in NOT_YET]
    assert left == [], "a run kind's name compared (ask its record in trainer.kinds instead):\n" + "\n".join(left)
