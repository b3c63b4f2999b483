"""Text augmentation: one strength knob, only completions change, deterministic per seed."""

import copy
import random

import pytest

from trainer.errors import ConfigError
from trainer.text.augment import TextAugmenter, drop_words, shuffle_sentences
from trainer.text.data import TextExample

STORY = ("The fox ran across the field at dawn. It stopped by the old oak tree! "
         "Was anyone watching from the farmhouse? The farmer slept on, unaware.\n"
         "Birds began to sing in the hedges. The day had started quietly.")


def text_examples(n=40):
    rng = random.Random(5)
    words = STORY.replace("\n", " ").split()
    return [TextExample(text=" ".join(rng.sample(words, 12)) + ". " + " ".join(rng.sample(words, 10)) + ".",
                        source=f"t:{i}") for i in range(n)]


def chat_example():
    return TextExample(messages=[
        {"role": "system", "content": "You are a poet. Answer in verse."},
        {"role": "user", "content": "Write about the sea. Make it short! Please."},
        {"role": "assistant", "content": STORY},
        {"role": "user", "content": "Another one. About the sky."},
        {"role": "assistant", "content": STORY.upper()},
    ], source="c.jsonl:1")


ALL_KINDS = [TextExample(text=STORY), TextExample(prompt="Tell a story. Keep it calm.", completion=STORY), chat_example()]


@pytest.mark.parametrize("example", ALL_KINDS, ids=["text", "completion", "chat"])
def test_strength_zero_is_identity(example):
    aug = TextAugmenter(0.0, seed=1)
    for _ in range(5):
        assert aug(example) == example


@pytest.mark.parametrize("strength, at_least", [(1.0, 0.8), (0.5, 0.5)])
def test_strength_changes_most_examples(strength, at_least):
    aug = TextAugmenter(strength, seed=0)
    examples = text_examples()
    changed = sum(aug(e).text != e.text for e in examples)
    assert changed >= at_least * len(examples)


def test_more_strength_changes_more():
    examples = text_examples(200)

    def changed_words(strength):
        aug = TextAugmenter(strength, seed=0)
        return sum(len(set(e.text.split()) ^ set(aug(e).text.split())) for e in examples)

    assert 0 < changed_words(0.2) < changed_words(1.0)


@pytest.mark.parametrize("example", ALL_KINDS, ids=["text", "completion", "chat"])
@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_input_never_mutated_and_source_kept(example, strength):
    before = copy.deepcopy(example)
    aug = TextAugmenter(strength, seed=2)
    outs = [aug(example) for _ in range(10)]
    assert example == before
    assert all(o is not example and o.source == example.source and o.kind == example.kind for o in outs)
    assert any(o != example for o in outs)


@pytest.mark.parametrize("seed", range(5))
def test_prompt_untouched_completion_changed(seed):
    example = TextExample(prompt="Tell a story. Keep it calm. Use plain words.", completion=STORY)
    aug = TextAugmenter(1.0, seed=seed)
    outs = [aug(example) for _ in range(10)]
    assert all(o.prompt == example.prompt for o in outs)
    assert any(o.completion != STORY for o in outs)


@pytest.mark.parametrize("seed", range(5))
def test_chat_changes_only_assistant_turns(seed):
    example = chat_example()
    aug = TextAugmenter(1.0, seed=seed)
    outs = [aug(example) for _ in range(10)]
    for out in outs:
        assert [m["role"] for m in out.messages] == [m["role"] for m in example.messages]
        for new, old in zip(out.messages, example.messages):
            if old["role"] != "assistant":
                assert new == old
    assert any(out.messages[2]["content"] != STORY for out in outs)
    assert any(out.messages[4]["content"] != STORY.upper() for out in outs)


@pytest.mark.parametrize("seed", range(3))
def test_deterministic_for_a_seed(seed):
    examples = text_examples(20) + ALL_KINDS
    a, b = TextAugmenter(0.7, seed=seed), TextAugmenter(0.7, seed=seed)
    assert [a(e) for e in examples] == [b(e) for e in examples]
    other = TextAugmenter(0.7, seed=seed + 100)
    assert [other(e) for e in examples] != [a(e) for e in examples]


@pytest.mark.parametrize("strength", [-0.1, 1.01, float("nan"), "0.5", None, True])
def test_strength_validated(strength):
    with pytest.raises(ConfigError, match="strength"):
        TextAugmenter(strength)


@pytest.mark.parametrize("text", ["one", "two words", "  padded single  ", "a b c d e f g h i j"])
def test_word_dropout_never_empties(text):
    rng = random.Random(0)
    for _ in range(200):
        out = drop_words(text, 0.99, rng)
        assert out.split() and set(out.split()) <= set(text.split())


def test_word_dropout_rate_follows_p():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    out = drop_words(" ".join(words), 0.1, rng).split()
    assert 0.08 < 1 - len(out) / len(words) < 0.12
    assert out == [w for w in words if w in set(out)]  # order kept


def test_sentence_shuffle_keeps_sentences_and_line_breaks():
    rng = random.Random(0)
    sents = ["The fox ran across the field at dawn.", "It stopped by the old oak tree!",
             "Was anyone watching from the farmhouse?", "The farmer slept on, unaware.",
             "Birds began to sing in the hedges.", "The day had started quietly."]
    outs = {shuffle_sentences(STORY, rng) for _ in range(20)}
    assert STORY not in outs and len(outs) > 5
    for out in outs:
        assert out.count("\n") == 1
        assert sorted(s.strip() for s in out.replace("\n", " ").split(" ") if s) == sorted(STORY.split())
        pieces = [p for line in out.split("\n") for p in _split_sentences(line)]
        assert sorted(pieces) == sorted(sents)


def _split_sentences(line):
    import re
    return [p for p in re.split(r"(?<=[.!?]) ", line) if p]


@pytest.mark.parametrize("text", ["Just one sentence here", "One sentence.", "Trailing space.  ", "no punctuation at all"])
def test_sentence_shuffle_single_sentence_is_noop(text):
    assert shuffle_sentences(text, random.Random(0)) == text


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_random_window_keeps_most_of_a_long_text_on_word_boundaries(strength):
    words = [f"token{i:04d}" for i in range(400)]  # no sentences, so only window + dropout act
    text = " ".join(words)
    aug = TextAugmenter(strength, seed=4, min_window_chars=200)
    windows = 0
    for _ in range(50):
        out = aug(TextExample(text=text)).text
        got = out.split()
        assert set(got) <= set(words)  # whole words only: no cut token
        assert len(out) >= 0.6 * len(text) * (1 - 0.1 * strength) - 50
        windows += got[0] != words[0] or got[-1] != words[-1]
    assert windows >= 10


def test_short_text_is_never_windowed():
    words = [f"t{i}" for i in range(20)]
    aug = TextAugmenter(1.0, seed=0, min_window_chars=200)
    for _ in range(50):
        out = aug(TextExample(text=" ".join(words))).text.split()
        # with dropout only, both ends survive unless the word itself was dropped; the middle
        # order is intact and nothing new appears
        assert out == [w for w in words if w in set(out)]


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_blank_text_left_alone(text):
    aug = TextAugmenter(1.0)
    assert aug.augment_text(text) == text


def test_leading_space_of_a_completion_survives():
    example = TextExample(prompt="Q: tell a story\nA:", completion=" " + " ".join([STORY] * 5))
    aug = TextAugmenter(1.0, seed=0, min_window_chars=100)
    outs = [aug(example).completion for _ in range(30)]
    assert all(o.startswith(" ") and not o.startswith("  ") for o in outs)
    assert len({o for o in outs}) > 20
