"""What kind of text a dataset is, the augmentation each kind gets, the declared override, and NEFTune.

Detection runs on small hand-written samples of each kind, on Python source taken from the
standard library, and on files read the way the trainer reads them (.txt blocks, chat .jsonl).
The augmentation tests assert on outputs over many seeds: code never loses or reorders a line
or a word, dialogue turns stay whole with their speakers, verse keeps its lines.
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap

import pytest

from trainer.errors import ConfigError
from trainer.text.augment import RECIPES, TextAugmenter, augmentation_plan, noisy_embeddings, split_turns
from trainer.text.data import TextExample, read_text_examples
from trainer.text.kinds import KINDS, check_text_kind, detect_kind, resolve_kind

PROSE = [
    "The committee met on Tuesday to discuss the budget for the coming year. Most members agreed that the "
    "library needed new shelves, but nobody could say where the money would come from.",
    "After a long winter the river rose quickly, and the farmers along its banks moved their animals to higher "
    "ground. By the end of the week the water had reached the old mill.",
    "She had never liked the city in August. The streets smelled of hot tar, the trains were crowded, and every "
    "conversation seemed to turn to the weather sooner or later.",
    "Good bread needs little more than flour, water, salt and time. The time is the part most recipes hurry, "
    "and it is the part that gives the loaf its taste.",
    "The survey found that most households owned at least one bicycle, although fewer than half used it more "
    "than once a month. Distance to work was the reason given most often.",
]

VERSE = [
    "Tyger Tyger, burning bright,\nIn the forests of the night;\nWhat immortal hand or eye,\nCould frame thy fearful symmetry?",
    "In what distant deeps or skies.\nBurnt the fire of thine eyes?\nOn what wings dare he aspire?\nWhat the hand, dare seize the fire?",
    "And what shoulder, & what art,\nCould twist the sinews of thy heart?\nAnd when thy heart began to beat,\nWhat dread hand? & what dread feet?",
    "What the hammer? what the chain,\nIn what furnace was thy brain?\nWhat the anvil? what dread grasp,\nDare its deadly terrors clasp!",
    "When the stars threw down their spears\nAnd water'd heaven with their tears:\nDid he smile his work to see?\nDid he who made the Lamb make thee?",
]

DIALOGUE = [
    "ALICE: Did you bring the map?\nBOB: I thought you had it.\nALICE: I gave it to you at the station.\nBOB: Then it is still on the bench.",
    "BOB: We could ask someone for the way.\nALICE: Nobody here speaks English.\nBOB: Then we point at the church and smile.",
    "ALICE: Is that the bus?\nBOB: It is a bus. Whether it is ours is another question.\nALICE: Run anyway.",
    "Ticket Inspector: Tickets, please.\nBOB: We bought them at the machine.\nTicket Inspector: These are for yesterday.",
    "ALICE: Well, that went well.\nBOB: We have seen the whole valley at least.\nALICE: Twice.",
]

CHAT = [{"messages": [{"role": "user", "content": f"How do I keep basil alive, part {i}?"},
                      {"role": "assistant", "content": "Give it plenty of light. Water it when the soil is dry. "
                                                       "Pinch off the flowers so the leaves keep growing."}]}
        for i in range(6)]


def stdlib_code() -> list[str]:
    """Functions from the standard library, as a member would paste them."""
    import json as json_module
    import shlex

    return [inspect.getsource(f) for f in (textwrap.dedent, textwrap.indent, json_module.dumps, shlex.quote,
                                           shlex.join, inspect.cleandoc)]


def texts(items: list[str]) -> list[TextExample]:
    return [TextExample(text=t, source=f"t:{i}") for i, t in enumerate(items)]


# ------------------------------------------------------------------------------------------------
# detection


@pytest.mark.parametrize("samples, kind, words", [
    (PROSE, "prose", "no sign of code"),
    (VERSE, "verse", "short lines"),
    (DIALOGUE, "dialogue", "start with a speaker's name and a colon (ALICE:, BOB:"),
    ([f"“Where are you going?” she asked.\n“Out,” he said.\n“Take a coat.”\n— I will." for _ in range(3)],
     "dialogue", "open with a quotation mark or a dash"),
    ([
        "function add(a, b) {\n  return a + b;\n}",
        "const total = items.reduce((sum, x) => sum + x.price, 0);\nconsole.log(total);",
        "for (let i = 0; i < n; i++) {\n  if (seen[i]) { continue; }\n  seen[i] = true;\n}",
        "#include <stdio.h>\nint main(void) {\n    printf(\"hi\\n\");\n    return 0;\n}",
    ], "code", "of lines are indented or end in"),
], ids=["prose", "verse", "speakers", "quoted", "js-and-c"])
def test_hand_written_samples_are_told_apart(samples, kind, words):
    found = detect_kind(texts(samples))
    assert found.kind == kind and words in found.reason and not found.declared


def test_standard_library_python_is_code():
    found = detect_kind(texts(stdlib_code()))
    assert found.kind == "code"
    assert re.fullmatch(r"\d+% of lines are indented or end in ':' / '\{' / ';' / '\}', \d+% of characters are "
                        r"brackets or operators and \d+% of lines start with a keyword", found.reason)
    for source in stdlib_code():  # each function alone, too
        assert detect_kind(texts([source])).kind == "code", source.splitlines()[0]


def test_code_read_from_a_txt_file_is_code_though_blank_lines_split_it(tmp_path):
    path = tmp_path / "snippets.txt"
    path.write_text("\n\n".join(stdlib_code()), encoding="utf-8")
    examples, _ = read_text_examples([path])
    assert len(examples) > len(stdlib_code())  # blank lines inside functions cut them into blocks
    assert detect_kind(examples).kind == "code"


def test_chat_jsonl_is_dialogue(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in CHAT), encoding="utf-8")
    examples, _ = read_text_examples([path])
    found = detect_kind(examples)
    assert found.kind == "dialogue" and found.reason == "6 of 6 examples are chat conversations (messages with roles)"


def test_a_chat_whose_answers_are_code_is_code():
    examples = [TextExample(messages=[{"role": "user", "content": "Show me dedent."},
                                      {"role": "assistant", "content": source}]) for source in stdlib_code()]
    assert detect_kind(examples).kind == "code"


def test_prose_with_a_colon_here_and_there_or_a_list_stays_prose():
    samples = [p + "\nNote: this is only an example." for p in PROSE]
    assert detect_kind(texts(samples)).kind == "prose"
    lists = [f"Things to pack for trip {i}:\n- a warm coat for the evenings by the lake\n- two pairs of walking "
             f"shoes and some socks\n- the map that Alice printed last week" for i in range(5)]
    assert detect_kind(texts(lists)).kind == "prose"


# ------------------------------------------------------------------------------------------------
# a declared kind, and bad values


def test_a_declared_kind_wins_and_says_what_detection_thought():
    chosen = resolve_kind("verse", texts(PROSE))
    assert (chosen.kind, chosen.declared, chosen.detected) == ("verse", True, "prose")
    assert chosen.reason.startswith("text_kind=verse in the settings; detection would have said prose (")
    assert resolve_kind(" Prose ", texts(PROSE)).reason == "text_kind=prose in the settings"
    assert resolve_kind("auto", texts(VERSE)) == detect_kind(texts(VERSE))


def test_an_unknown_kind_is_one_clear_error_listing_the_choices():
    from trainer.spec import RunSpec
    from trainer.text.config import TextTrainConfig

    allowed = "auto, code, dialogue, verse, prose"
    with pytest.raises(ConfigError, match=f"text_kind must be one of {allowed}"):
        check_text_kind("poem")
    with pytest.raises(ConfigError, match=f"text_kind: must be one of {allowed} .* got 'poem'"):
        TextTrainConfig.build(data=["d.txt"], out="o", text_kind="poem")
    with pytest.raises(ConfigError, match=f"text_kind: must be one of {allowed}"):
        RunSpec.build(kind="text", data=["d.txt"], settings={"text_kind": "poem"})
    with pytest.raises(ConfigError, match="kind of text must be one of code, dialogue, verse, prose"):
        TextAugmenter(0.5, kind="auto")


def test_text_kind_and_neftune_travel_in_the_run_spec():
    from trainer.spec import RunSpec

    spec = RunSpec.build(kind="text", data=["d.txt"], settings={"text_kind": "Code", "neftune_alpha": 5})
    stored = RunSpec.from_job(spec.job_kind, json.loads(json.dumps(spec.to_job())))
    config = stored.train_config("out")
    assert (config.text_kind, config.neftune_alpha) == ("code", 5.0)
    default = RunSpec.build(kind="text", data=["d.txt"]).train_config("out")
    assert (default.text_kind, default.neftune_alpha) == ("auto", 0.0)


# ------------------------------------------------------------------------------------------------
# what each kind's augmentation does, over many seeds


def _is_contiguous_slice(part: list[str], whole: list[str]) -> bool:
    return any(whole[i:i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def test_code_never_has_lines_shuffled_or_words_dropped():
    changed = 0
    for source in stdlib_code():
        example = TextExample(text=source.strip())
        lines = example.text.split("\n")
        for seed in range(60):
            out = TextAugmenter(1.0, seed=seed, kind="code", min_window_chars=60)(example).text
            assert _is_contiguous_slice(out.split("\n"), lines), (seed, out)  # whole lines, in order, none edited
            changed += out != example.text
    assert changed > 60  # the window did cut: the test would see a shuffle or a dropped word


def test_code_completions_and_chat_answers_keep_their_lines_too():
    source = stdlib_code()[0].strip()
    completion = TextExample(prompt="# textwrap.dedent\n", completion=source)
    chat = TextExample(messages=[{"role": "user", "content": "dedent?"}, {"role": "assistant", "content": source}])
    for seed in range(40):
        aug = TextAugmenter(1.0, seed=seed, kind="code", min_window_chars=60)
        assert _is_contiguous_slice(aug(completion).completion.split("\n"), source.split("\n"))
        assert _is_contiguous_slice(aug(chat).messages[1]["content"].split("\n"), source.split("\n"))


def _turns(text: str) -> list[tuple[str, list[str]]]:
    return [(t.split(":", 1)[0], t.split(":", 1)[1].split()) for t in split_turns(text)[::2]]


def _subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(word in it for word in part)


def test_dialogue_turns_move_whole_with_their_speaker():
    example = TextExample(text="\n".join(DIALOGUE[:3]))
    original = _turns(example.text)
    reordered = 0
    for seed in range(200):
        out = TextAugmenter(1.0, seed=seed, kind="dialogue", min_window_chars=60)(example).text
        turns = _turns(out)
        assert all(line.split(":", 1)[0] in {"ALICE", "BOB"} for line in out.split("\n")), out  # names never dropped
        for speaker, words in turns:  # each turn is one original turn of the same speaker, minus some words
            assert any(s == speaker and _subsequence(words, w) for s, w in original), (seed, out)
        reordered += [s for s, _ in turns] != [s for s, _ in original][:len(turns)]
    assert reordered > 20


def test_a_chat_answer_is_one_turn_in_dialogue_and_never_shuffled():
    answer = CHAT[0]["messages"][1]["content"]
    example = TextExample(messages=CHAT[0]["messages"])
    dropped = 0
    for seed in range(100):
        out = TextAugmenter(1.0, seed=seed, kind="dialogue")(example).messages
        assert out[0] == example.messages[0]
        assert _subsequence(out[1]["content"].split(), answer.split()), out[1]["content"]
        dropped += out[1]["content"] != answer
    assert dropped > 50  # word dropout still runs inside the turn
    prose = [TextAugmenter(1.0, seed=s)(example).messages[1]["content"] for s in range(100)]
    assert any(not _subsequence(p.split(), answer.split()) for p in prose)  # prose would have shuffled it


def test_verse_keeps_its_lines_and_swaps_only_neighbours():
    example = TextExample(text=VERSE[0] + "\n\n" + VERSE[1])
    lines = [line for line in example.text.split("\n") if line]
    swapped = ambiguous = 0
    for seed in range(200):
        out = TextAugmenter(1.0, seed=seed, kind="verse", min_window_chars=40)(example).text
        where = []  # the original line each output line comes from (a line loses a word now and then)
        for line in filter(None, out.split("\n")):
            sources = [i for i, original in enumerate(lines) if _subsequence(line.split(), original.split())]
            assert sources, (seed, line)  # no line is merged with another or made of two
            where.append(sources[0] if len(sources) == 1 else None)
        if None in where:
            ambiguous += 1
            continue
        assert sorted(where) == list(range(min(where), min(where) + len(where))), out  # a window of whole lines
        descents = sum(a > b for a, b in zip(where, where[1:]))
        assert descents <= 1, out  # one pair of neighbouring lines (or stanzas) swapped, never a full shuffle
        swapped += descents
    assert ambiguous < 20 and swapped > 10


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_deterministic_per_seed_and_strength_zero_is_identity(kind):
    examples = texts(PROSE + VERSE + DIALOGUE + stdlib_code())
    run = lambda seed: [TextAugmenter(0.8, seed=seed, kind=kind, min_window_chars=60)(e) for e in examples]  # noqa: E731
    assert run(3) == run(3) and run(3) != run(4)
    assert [TextAugmenter(0.0, seed=1, kind=kind)(e) for e in examples] == examples


def test_prose_is_the_default_recipe():
    examples = texts(PROSE)
    assert ([TextAugmenter(1.0, seed=7)(e) for e in examples] ==
            [TextAugmenter(1.0, seed=7, kind="prose")(e) for e in examples])


# ------------------------------------------------------------------------------------------------
# the words a member reads


def test_the_plan_says_what_is_used_and_what_is_off_for_code():
    code = detect_kind(texts(stdlib_code()))
    plan = dict(augmentation_plan(code))
    assert plan["Kind of text"].startswith("code (detected: ")
    # the ablation found no gain on code: the preset leaves both off, and the plan says so and why
    assert plan["Augmentation for code"] == ("off by default (see below); when on: random windows of long texts, "
                                             "cut on line boundaries")
    assert plan["Off by default for code"].startswith("augmentation and LoRA dropout: at 32 examples, ")
    assert "+0.1%" in plan["Off by default for code"]
    assert plan["Off by default for code"].endswith("setting augment or lora_dropout above 0 turns them on")
    mine = dict(augmentation_plan(code, augment=0.2))  # a member's own strength wins; dropout stays off
    assert mine["Augmentation for code"] == "random windows of long texts, cut on line boundaries"
    assert mine["Off by default for code"].startswith("LoRA dropout: ")
    assert mine["Off by default for code"].endswith("setting lora_dropout above 0 turns it on")
    assert dict(augmentation_plan(code, augment=0.0))["Augmentation for code"] == "off (augment is 0 in the settings)"
    best = dict(augmentation_plan(code, preset="best"))  # best keeps them: it was not measured
    assert best["Augmentation for code"] == "random windows of long texts, cut on line boundaries"
    assert "Off by default for code" not in best
    assert "Off by default for code" not in dict(augmentation_plan(code, augment=0.2, lora_dropout=0.05))
    assert "Off by default for code" not in dict(augmentation_plan(code, n_train=7))  # on for tiny sets
    assert plan["Off for code"] == ("sentence and line shuffle (reordered statements do not run); "
                                    "word dropout (a missing token breaks the syntax)")
    assert plan["Noisy embeddings (NEFTune)"].startswith("off by default: measured at 8 and 32 examples")
    assert "neftune_alpha turns them on" in plan["Noisy embeddings (NEFTune)"]
    declared = dict(augmentation_plan(resolve_kind("dialogue", texts(PROSE)), neftune_alpha=5))
    assert declared["Kind of text"].startswith("dialogue (declared: text_kind=dialogue in the settings; "
                                               "detection would have said prose")
    assert "never in a speaker's name" in declared["Augmentation for dialogue"]
    assert declared["Noisy embeddings (NEFTune)"] == "on, alpha 5"
    assert "Off for prose" not in dict(augmentation_plan(detect_kind(texts(PROSE))))
    assert set(RECIPES) == set(KINDS)


# ------------------------------------------------------------------------------------------------
# NEFTune: transformers' hook, on while a training step runs and nowhere else


def test_neftune_noises_training_embeddings_only_inside_the_block(tiny_llama):
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.models import load_causal_lm

    model, tokenizer = load_causal_lm(tiny_llama, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    embeddings = model.get_input_embeddings()
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    clean = embeddings.weight[ids].detach()
    with noisy_embeddings(model, 5.0):
        model.train()
        noisy = embeddings(ids)
        assert not torch.allclose(noisy, clean)
        bound = 5.0 / (ids.shape[1] * clean.shape[-1]) ** 0.5
        assert (noisy - clean).abs().max() <= bound + 1e-6  # the paper's alpha / sqrt(L x d) uniform noise
        model.eval()
        assert torch.equal(embeddings(ids), clean)
        with torch.no_grad():
            eval_logits = model(input_ids=ids).logits
    assert not embeddings._forward_hooks and not hasattr(embeddings, "neftune_noise_alpha")
    model.train()
    assert torch.equal(embeddings(ids), clean)  # detached: training mode outside the block is clean
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, eval_logits)
    with noisy_embeddings(model, 0.0):
        assert not embeddings._forward_hooks


def test_a_run_with_neftune_trains_noised_records_its_kind_and_exports(tiny_llama, tmp_path):
    from trainer.text.config import TextTrainConfig
    from trainer.text.sample import load_run_model
    from trainer.text.train import train_text

    data = tmp_path / "code.txt"
    data.write_text("\n\n".join(stdlib_code()), encoding="utf-8")

    def run(name, **settings):
        events = []
        config = TextTrainConfig(data=[str(data)], out=str(tmp_path / name), base=str(tiny_llama), steps=3, lr=5e-3,
                                 rank=4, seq_len=64, batch_size=2, eval_every=3, augment=0.0, lora_dropout=0.0,
                                 max_new_tokens=4, precision="fp32", threads=1, **settings)
        result = train_text(config, on_event=events.append)
        return result, [e.loss for e in events if e.kind == "step"]

    noised, noised_losses = run("neftune", neftune_alpha=5.0)
    clean, clean_losses = run("clean", text_kind="verse")
    assert noised_losses[0] != clean_losses[0]  # same seed, data and init: only the embedding noise differs
    for result in (noised, clean):
        assert result.stop_reason == "completed" and result.steps_done == 3
        assert (result.run_dir / "adapter" / "adapter_model.safetensors").exists()
    metrics = json.loads((noised.run_dir / "metrics.json").read_text())
    assert metrics["text_kind"] == "code" and metrics["text_kind_declared"] is False
    assert metrics["text_kind_reason"].endswith("of lines start with a keyword")
    assert metrics["config"]["neftune_alpha"] == 5.0
    declared = json.loads((clean.run_dir / "metrics.json").read_text())
    assert declared["text_kind"] == "verse" and declared["text_kind_declared"] is True
    assert declared["text_kind_reason"].startswith("text_kind=verse in the settings; detection would have said code")
    model, _, _ = load_run_model(noised.run_dir)  # the exported adapter loads back, with no hook in it
    assert not model.get_input_embeddings()._forward_hooks
