"""Text datasets: read .txt/.md/.jsonl/.csv files into examples, drop duplicates, split.

``load_text_dataset`` is the one call a trainer needs: it reads every file, drops duplicate
examples, checks there are enough, splits off a validation set and returns a ``DataReport``
that the run stores in ``metrics.json`` and the bot shows on its report card.

Formats (the file extension decides; a file whose bytes are an archive, a document or other
binary data is refused whatever its name says, see ``trainer.filetypes``):

- ``.txt`` / ``.md``: one example per block of text between blank lines. A block longer than
  ``TextLimits.window_chars`` (such as a whole book with no blank lines) is cut into windows of
  at most that size, on paragraph, line, sentence or word boundaries where possible.
- ``.jsonl``: one JSON object per line: ``{"text": ...}``, ``{"prompt": ..., "completion": ...}``
  or ``{"messages": [{"role": "user"|"assistant"|"system", "content": ...}, ...]}``.
- ``.csv``: a ``text`` column, or ``prompt`` and ``completion`` columns (names are matched
  case-insensitively), or any single column. The first row is always the header.

Every problem found in the files is gathered into one ``DataError`` whose message says what
to change. Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

from .. import limits as L
from ..errors import DataError
from ..filetypes import not_text
from ..kinds import TEXT

MIN_EXAMPLES = TEXT.min_examples
ACCEPTED_EXTENSIONS = TEXT.extensions  # what text sessions take (trainer.kinds)
CHAT_ROLES = ("system", "user", "assistant")
JSONL_SHAPES = ('{"text"}', '{"prompt", "completion"}', '{"messages"}')
CSV_COLUMNS = ("text", "prompt + completion")

STEADY_EXAMPLES = 20       # below this, a warning suggests adding more
_MAX_PROBLEMS_PER_FILE = 10  # a broken 10k-line file should not produce a 10k-line message
_MAX_DUPLICATE_SOURCES = 50  # report lists at most this many; duplicates_dropped has the full count


@dataclass(frozen=True)
class TextLimits:
    """Size limits for text datasets; defaults suit a Discord upload of a few files."""

    max_file_bytes: int = L.MAX_FILE_BYTES
    """Largest accepted file, in bytes."""
    max_example_chars: int = L.MAX_EXAMPLE_CHARS
    """Longest accepted .jsonl/.csv example, in characters (prompt and completion together)."""
    window_chars: int = 2_000
    """A .txt/.md block longer than this is cut into windows of at most this many characters."""
    max_examples: int = L.MAX_TEXT_EXAMPLES
    """Most examples a dataset may hold after dropping duplicates."""

    def __post_init__(self):
        bad = [f"{name}={getattr(self, name)!r}" for name in
               ("max_file_bytes", "max_example_chars", "window_chars", "max_examples")
               if not isinstance(getattr(self, name), int) or getattr(self, name) < 1]
        if self.window_chars < 100:
            bad.append(f"window_chars={self.window_chars!r} (at least 100)")
        if bad:
            raise ValueError(f"TextLimits must be positive integers: {', '.join(bad)}")


@dataclass
class TextExample:
    """One training example: plain ``text``, a ``prompt``/``completion`` pair, or chat ``messages``.

    Exactly one of the three shapes is set (``ValueError`` otherwise). ``source`` says where
    the example came from, ``"file.jsonl:12"``, for messages to the user.
    """

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict] | None = None
    source: str = ""

    def __post_init__(self):
        shapes = [self.text is not None, self.prompt is not None or self.completion is not None,
                  self.messages is not None]
        if sum(shapes) != 1:
            raise ValueError("A TextExample holds exactly one of: text, prompt+completion, messages.")
        if shapes[1] and (self.prompt is None or self.completion is None):
            raise ValueError("A prompt/completion TextExample needs both prompt and completion.")

    @property
    def kind(self) -> Literal["text", "completion", "chat"]:
        if self.messages is not None:
            return "chat"
        if self.completion is not None:
            return "completion"
        return "text"

    @property
    def n_chars(self) -> int:
        """Characters of content (prompt and completion together; every chat turn)."""
        if self.kind == "chat":
            return sum(len(m["content"]) for m in self.messages)
        if self.kind == "completion":
            return len(self.prompt) + len(self.completion)
        return len(self.text)

    def key(self) -> str:
        """Content with whitespace runs collapsed (case kept): equal keys mean duplicates."""
        if self.kind == "chat":
            body = "\x1e".join(f"{m['role']}:{_collapse(m['content'])}" for m in self.messages)
        elif self.kind == "completion":
            body = f"{_collapse(self.prompt)}\x1e{_collapse(self.completion)}"
        else:
            body = _collapse(self.text)
        return f"{self.kind}\x1f{body}"

    def to_dict(self) -> dict:
        """The set fields only, in the .jsonl shape this example would be read from."""
        if self.kind == "chat":
            return {"messages": [dict(m) for m in self.messages]}
        if self.kind == "completion":
            return {"prompt": self.prompt, "completion": self.completion}
        return {"text": self.text}


@dataclass
class DataReport:
    """What was read, for metrics.json and the bot's report card (``to_dict`` is JSON-ready).

    ``duplicate_sources`` names dropped duplicates as ``"b.txt:9 (same as a.txt:1)"``, at most
    50 of them; ``duplicates_dropped`` is the full count. ``n_windows_cut`` counts the windows
    that long .txt/.md blocks were cut into. ``n_train``/``n_val`` stay 0 until a split.
    """

    files: list[str] = field(default_factory=list)
    n_examples: int = 0
    n_train: int = 0
    n_val: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    duplicate_sources: list[str] = field(default_factory=list)
    chars_min: int = 0
    chars_median: int = 0
    chars_max: int = 0
    n_windows_cut: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TextDataset:
    train: list[TextExample]
    val: list[TextExample]
    report: DataReport


# ---------------------------------------------------------------- public entry points

def load_text_dataset(paths: Sequence[str | Path], *, val_fraction: float = 0.1, seed: int = 0,
                      limits: TextLimits = TextLimits(), holdout: str | None = None) -> TextDataset:
    """Read ``paths``, drop duplicates, check there are ``MIN_EXAMPLES``, split train/val.

    Raises ``DataError`` for any problem with the files, too few examples, or a
    ``val_fraction`` outside (0, 0.5].
    """
    _check_val_fraction(val_fraction)
    examples, report = read_text_examples(paths, limits=limits)
    _check_enough(len(examples), report.duplicates_dropped)
    if holdout:  # a cross-validation fold, or every example (trainer.folds)
        from ..folds import split_holdout

        train, val = split_holdout(examples, holdout, seed)
    else:
        train, val = split_examples(examples, val_fraction=val_fraction, seed=seed)
    report.n_train, report.n_val = len(train), len(val)
    return TextDataset(train=train, val=val, report=report)


def read_text_examples(paths: Sequence[str | Path], *,
                       limits: TextLimits = TextLimits()) -> tuple[list[TextExample], DataReport]:
    """Read every file into examples, with duplicates already dropped, and describe them.

    Problems in all files are collected and raised together as one ``DataError``. A file
    that yields no example is a problem; fewer than ``MIN_EXAMPLES`` overall is not (that is
    ``load_text_dataset``'s check), so callers can preview a small upload.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise DataError("No dataset files given: attach .txt, .md, .jsonl or .csv files.")
    examples: list[TextExample] = []
    problems: list[str] = []
    report = DataReport(files=[str(p) for p in paths])
    for path in map(Path, paths):
        got, file_problems, notes = _read_file(path, limits, report)
        examples.extend(got)
        problems.extend(file_problems)
        report.warnings.extend(notes)
    if problems:
        raise DataError(_join_problems(problems))

    examples = _drop_duplicates(examples, report)
    if len(examples) > limits.max_examples:
        raise DataError(f"The dataset holds {len(examples)} examples, over the limit of "
                        f"{limits.max_examples}; upload fewer or smaller files.")
    _describe(examples, report)
    return examples, report


def split_examples(examples: Sequence[TextExample], *, val_fraction: float = 0.1,
                   seed: int = 0) -> tuple[list[TextExample], list[TextExample]]:
    """Split into (train, val), the same way every time for the same examples and seed.

    The validation set holds ``max(1, round(n * val_fraction))`` examples, capped so the
    train set keeps at least 4; both keep the input order. Needs ``MIN_EXAMPLES`` examples.
    """
    _check_val_fraction(val_fraction)
    n = len(examples)
    _check_enough(n, 0)
    n_val = min(max(1, round(n * val_fraction)), n - (MIN_EXAMPLES - 1))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    val = [ex for i, ex in enumerate(examples) if i in val_idx]
    return train, val


# ---------------------------------------------------------------- reading files

def _read_file(path: Path, limits: TextLimits, report: DataReport) -> tuple[list[TextExample], list[str], list[str]]:
    """Examples, problems and notes from one file; never raises for the user's mistakes."""
    name = path.name
    ext = path.suffix.lower()
    if ext not in ACCEPTED_EXTENSIONS:
        return [], [f"{name}: unsupported file type {ext or '(no extension)'!r}; "
                    f"accepted: {', '.join(ACCEPTED_EXTENSIONS)}."], []
    if not path.exists():
        return [], [f"{name}: file not found ({path})."], []
    if not path.is_file():
        return [], [f"{name}: not a file ({path})."], []
    too_large = L.file_size_problem(path.stat().st_size, TEXT.name, limits.max_file_bytes)
    if too_large:  # before the content: a huge file is refused for its size, whatever its bytes are
        return [], [f"{name}: {too_large}"], []
    raw = path.read_bytes()
    problem = not_text(raw, name)  # a tar archive named .txt would otherwise read as "text" headers
    if problem:
        return [], [f"{name}: {problem}"], []
    text, problem = _decode(name, raw)
    if problem:
        return [], [problem], []
    if not text.strip():
        return [], [f"{name}: file is empty; it needs at least one example."], []

    notes: list[str] = []
    if ext in (".txt", ".md"):
        examples, problems = _read_plain(name, text, limits, report), []
    elif ext == ".jsonl":
        examples, problems, skipped = _read_jsonl(name, text)
        if skipped:
            notes.append(f"{name}: skipped {skipped} line(s) with empty text or completion.")
    else:
        examples, problems, skipped = _read_csv(name, text)
        if skipped:
            notes.append(f"{name}: skipped {skipped} row(s) with an empty text cell.")
    problems += _oversized(examples, limits)
    if not examples and not problems:
        problems.append(f"{name}: no examples found in it; it needs at least one.")
    if len(problems) > _MAX_PROBLEMS_PER_FILE:
        more = len(problems) - _MAX_PROBLEMS_PER_FILE
        problems = problems[:_MAX_PROBLEMS_PER_FILE] + [f"{name}: ... and {more} more problem(s) like these."]
    return examples, problems, notes


def _decode(name: str, raw: bytes) -> tuple[str, str | None]:
    """The file's text with \\n line endings, or a problem saying where it is not UTF-8."""
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = e.start + bom
        line = raw[:offset].count(b"\n") + 1
        return "", (f"{name}: not UTF-8 text (first bad byte at offset {offset}, line {line}); "
                    f"save it as UTF-8 and upload it again.")
    return text.replace("\r\n", "\n").replace("\r", "\n"), None


def _read_plain(name: str, text: str, limits: TextLimits, report: DataReport) -> list[TextExample]:
    """Blocks between blank lines; blocks over ``window_chars`` are cut into windows."""
    examples = []
    for line_no, block in _blocks(text):
        if len(block) <= limits.window_chars:
            examples.append(TextExample(text=block, source=f"{name}:{line_no}"))
            continue
        for offset_line, window in cut_windows(block, limits.window_chars):
            examples.append(TextExample(text=window, source=f"{name}:{line_no + offset_line}"))
            report.n_windows_cut += 1
    return examples


def _blocks(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, block) for each run of non-blank lines.

    Trailing spaces are dropped from every line (Markdown's two-space line break is noise
    for a language model).
    """
    start, lines = 0, []
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip()
        if line:
            if not lines:
                start = i
            lines.append(line)
        elif lines:
            yield start, "\n".join(lines).strip()
            lines = []
    if lines:
        yield start, "\n".join(lines).strip()


# Where a window may end, best first: after a paragraph, a line, a sentence, a word.
_CUT_PATTERNS = [re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?][\"')\]]*\s"), re.compile(r"\s")]


def cut_windows(text: str, window_chars: int) -> list[tuple[int, str]]:
    """Cut ``text`` into windows of at most ``window_chars``: [(line offset, window), ...].

    Each cut falls on the best boundary in the second half of the window (paragraph, then
    line, then sentence, then word), and mid-word only when there is none. Whitespace at a
    cut is dropped; otherwise the windows together hold the whole text.
    """
    windows = []
    pos, line = 0, 0
    n = len(text)
    while pos < n:
        # skip whitespace at the start of a window, counting the lines it spans
        while pos < n and text[pos].isspace():
            line += text[pos] == "\n"
            pos += 1
        if pos >= n:
            break
        end = min(n, pos + window_chars)
        if end < n:
            end = _best_cut(text, pos + window_chars // 2, end)
        window = text[pos:end].rstrip()
        windows.append((line, window))
        line += text.count("\n", pos, end)
        pos = end
    return windows


def _best_cut(text: str, lo: int, hi: int) -> int:
    """End of the last boundary within ``text[lo:hi]``, trying the best kind first; else ``hi``."""
    for pattern in _CUT_PATTERNS:
        last = None
        for last in pattern.finditer(text, lo, hi):
            pass
        if last is not None:
            return last.end()  # the boundary's whitespace ends the window and is stripped
    return hi


def _read_jsonl(name: str, text: str) -> tuple[list[TextExample], list[str], int]:
    examples, problems, skipped = [], [], 0
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{name} line {line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                            f"each line must be one JSON object.")
            continue
        example, problem = _example_from_object(obj, where, f"{name}:{line_no}")
        if problem:
            problems.append(problem)
        elif example is None:
            skipped += 1
        else:
            examples.append(example)
    return examples, problems, skipped


def _example_from_object(obj, where: str, source: str) -> tuple[TextExample | None, str | None]:
    """An example from one JSON object; (None, None) when its text is empty (skipped)."""
    accepted = f"accepted keys: {' or '.join(JSONL_SHAPES)}"
    if not isinstance(obj, dict):
        return None, f"{where}: expected a JSON object, got {type(obj).__name__}; {accepted}."
    keys = set(obj)
    if keys == {"text"}:
        value = obj["text"]
        if not isinstance(value, str):
            return None, f"{where}: \"text\" must be a string, got {type(value).__name__}."
        return (TextExample(text=value.strip(), source=source) if value.strip() else None), None
    if keys == {"prompt", "completion"}:
        bad = [k for k in ("prompt", "completion") if not isinstance(obj[k], str)]
        if bad:
            return None, f"{where}: {' and '.join(repr(k) for k in bad)} must be strings."
        if not obj["completion"].strip():
            return None, None
        return TextExample(prompt=obj["prompt"], completion=obj["completion"], source=source), None
    if keys == {"messages"}:
        messages, problem = _check_messages(obj["messages"], where)
        if problem:
            return None, problem
        return TextExample(messages=messages, source=source), None
    found = ", ".join(repr(k) for k in sorted(keys)) or "none"
    return None, f"{where}: keys {found} are not an accepted shape; {accepted}."


def _check_messages(messages, where: str) -> tuple[list[dict] | None, str | None]:
    if not isinstance(messages, list) or not messages:
        return None, f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects."
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            return None, f"{where}: message {i} needs a \"role\" and a string \"content\"."
        if m["role"] not in CHAT_ROLES:
            return None, (f"{where}: message {i} has role {m['role']!r}; "
                          f"accepted roles: {', '.join(CHAT_ROLES)}.")
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in clean):
        return None, f"{where}: no non-empty \"assistant\" message; the model learns from assistant turns."
    return clean, None


def _read_csv(name: str, text: str) -> tuple[list[TextExample], list[str], int]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        return [], [f"{name}: cannot read the CSV header ({e})."], 0
    columns = [c.strip().lower() for c in header]
    pick = _csv_columns(columns)
    if pick is None:
        found = ", ".join(repr(c) for c in header)
        return [], [f"{name}: no text column among {found}; name the column \"text\", "
                    f"or use \"prompt\" and \"completion\" columns, or keep a single column."], 0
    examples, problems, skipped = [], [], 0
    try:
        for row in reader:
            source = f"{name}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            cells = [row[i] if i < len(row) else "" for i in pick]
            if len(pick) == 1:
                if cells[0].strip():
                    examples.append(TextExample(text=cells[0].strip(), source=source))
                else:
                    skipped += 1
            elif cells[1].strip():
                examples.append(TextExample(prompt=cells[0], completion=cells[1], source=source))
            else:
                skipped += 1
    except csv.Error as e:
        problems.append(f"{name} line {reader.line_num}: unreadable CSV ({e}).")
    return examples, problems, skipped


def _csv_columns(columns: list[str]) -> list[int] | None:
    """Indexes of the column(s) to read: [text] or [prompt, completion]; None when unclear."""
    if "text" in columns:
        return [columns.index("text")]
    if "prompt" in columns and "completion" in columns:
        return [columns.index("prompt"), columns.index("completion")]
    if len(columns) == 1:
        return [0]
    return None


def _oversized(examples: list[TextExample], limits: TextLimits) -> list[str]:
    return [f"{ex.source}: example is {ex.n_chars} characters, over the {limits.max_example_chars} "
            f"limit; split it into shorter examples (a .txt file is cut into windows for you)."
            for ex in examples if ex.n_chars > limits.max_example_chars]


# ---------------------------------------------------------------- checks and report

def _drop_duplicates(examples: list[TextExample], report: DataReport) -> list[TextExample]:
    first: dict[str, TextExample] = {}
    for ex in examples:
        kept = first.setdefault(ex.key(), ex)
        if kept is not ex:
            report.duplicates_dropped += 1
            if len(report.duplicate_sources) < _MAX_DUPLICATE_SOURCES:
                report.duplicate_sources.append(f"{ex.source} (same as {kept.source})")
    return list(first.values())


def _describe(examples: list[TextExample], report: DataReport) -> None:
    """Fill counts, lengths and coaching warnings."""
    report.n_examples = len(examples)
    for ex in examples:
        report.kinds[ex.kind] = report.kinds.get(ex.kind, 0) + 1
    if not examples:
        return
    lengths = [ex.n_chars for ex in examples]
    report.chars_min, report.chars_max = min(lengths), max(lengths)
    report.chars_median = int(statistics.median(lengths))
    report.warnings.extend(_advice(report, lengths))


def _advice(report: DataReport, lengths: list[int]) -> list[str]:
    n, advice = report.n_examples, []
    if n < STEADY_EXAMPLES:
        advice.append(f"only {n} examples: {STEADY_EXAMPLES}+ gives steadier results")
    short = sum(1 for x in lengths if x < 20)
    if short * 2 > n:
        advice.append(f"{short} of {n} examples are under 20 characters: a sentence or more "
                      f"per example gives the model more to learn from")
    if report.chars_max > 500 and report.chars_max > 20 * max(1, report.chars_median):
        advice.append(f"example lengths vary a lot ({report.chars_min} to {report.chars_max} characters): "
                      f"the longest ones dominate training; consider splitting them")
    total = n + report.duplicates_dropped
    if report.duplicates_dropped and report.duplicates_dropped * 5 >= total:
        advice.append(f"{report.duplicates_dropped} of {total} examples were duplicates and were dropped: "
                      f"check that the same file was not uploaded twice")
    if report.n_windows_cut:
        advice.append(f"long texts were cut into {report.n_windows_cut} shorter windows, "
                      f"each one an example")
    return advice


def _check_val_fraction(val_fraction: float) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction <= 0.5:
        raise DataError(f"val_fraction must be above 0 and at most 0.5, got {val_fraction!r}.")


def _check_enough(n: int, dropped: int) -> None:
    if n < MIN_EXAMPLES:
        after = f" after dropping {dropped} duplicate(s)" if dropped else ""
        raise DataError(f"Found {n} example(s){after}; at least {MIN_EXAMPLES} are needed. "
                        f"Add {MIN_EXAMPLES - n} more (separate examples with a blank line in .txt/.md).")


def _join_problems(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems with the dataset:\n" + "\n".join(f"- {p}" for p in problems)


def _collapse(s: str) -> str:
    return " ".join(s.split())
