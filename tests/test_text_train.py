"""The text trainer on a tiny Llama: loss falls, artifacts, adapter round-trip, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.cancel import CancelToken
from trainer.errors import Cancelled, ConfigError, DataError, ModelError, UserError
from trainer.text.config import TextTrainConfig
from trainer.text.train import train_text

RUN_FILES = {"adapter", "metrics.json", "samples.json", "loss.png", "events.jsonl"}
ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "README.md"}


def tiny_config(tiny_llama, data, out, **overrides) -> TextTrainConfig:
    settings = dict(data=[str(data)], out=str(out), base=str(tiny_llama), steps=24, lr=5e-3, rank=8,
                    target_modules="all-linear", seq_len=64, batch_size=2, eval_every=6, augment=0.0,
                    lora_dropout=0.0, max_new_tokens=8, precision="fp32", threads=1)
    settings.update(overrides)
    return TextTrainConfig(**settings)


@pytest.fixture(scope="module")
def finished_run(tiny_llama, tmp_path_factory):
    """One finished 24-step run shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("run")
    data = root / "texts.txt"
    from tests.conftest import TINY_CORPUS

    data.write_text("\n\n".join(f"{s} Line {i}." for i, s in enumerate(TINY_CORPUS * 2)), encoding="utf-8")
    events = []
    result = train_text(tiny_config(tiny_llama, data, root / "out"), on_event=events.append)
    return result, events, data


def test_loss_falls(finished_run):
    result, events, _ = finished_run
    losses = [e.loss for e in events if e.kind == "step"]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1
    val = [e.val_loss for e in events if e.kind == "eval"]
    assert len(val) == 4 and min(val) < val[0]
    assert result.val_loss == pytest.approx(min(val))


def test_exact_artifacts(finished_run):
    result, _, _ = finished_run
    assert {p.name for p in result.run_dir.iterdir()} == RUN_FILES
    assert {p.name for p in (result.run_dir / "adapter").iterdir()} == ADAPTER_FILES
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["kind"] == "text" and metrics["status"] == "done"
    assert metrics["config"]["rank"] == 8 and metrics["data_report"]["n_train"] + metrics["data_report"]["n_val"] == 16
    assert len(metrics["curves"]["train_loss"]) == 24 and len(metrics["curves"]["val_loss"]) == 4
    samples = json.loads((result.run_dir / "samples.json").read_text())
    assert samples and set(samples[0]) == {"prompt", "before", "after", "scores"}
    assert set(samples[0]["scores"]) <= {"score_heldout_ppl", "score_copied_words", "score_distinct_2"}
    assert "score_copied_words" in samples[0]["scores"]  # each sample scored on its own (trainer.scores)
    assert (result.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    from PIL import Image  # the chart carries the run's scores (trainer.charts), readable without its pixels

    chart = Image.open(result.run_dir / "loss.png").text["Scores"].splitlines()
    assert chart[0] == f"held-out perplexity {metrics['score_heldout_ppl']:.2f}"
    assert chart[1] == f"longest copied run {metrics['score_copied_words']} words"


def test_samples_before_training_are_the_untrained_lora_models(tiny_llama, tmp_path):
    """The "before" samples come from the base with the LoRA switched off: the very text the freshly
    initialised LoRA model (B = 0) samples with the same seed."""
    from peft import LoraConfig, get_peft_model

    from tests.conftest import train_tiny_text
    from trainer.models import load_causal_lm
    from trainer.text.train import generate

    result = train_tiny_text(tmp_path, tiny_llama, max_new_tokens=12, prompts=["To be", "Line 3"])
    before = [s["before"] for s in json.loads((result.run_dir / "samples.json").read_text())]
    model, tokenizer = load_causal_lm(tiny_llama)
    torch.manual_seed(0)
    fresh = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert before == generate(fresh, tokenizer, ["To be", "Line 3"], 12, seed=result.metrics["config"]["seed"])
    assert any(before)  # something was sampled, so the comparison can fail


def test_prompts_sampled_in_one_batch_each_continue_their_own_prompt(tiny_llama, monkeypatch):
    """``generate`` draws every prompt in one left-padded batch. Near zero temperature sampling is
    greedy, so each prompt's continuation in a batch with a longer prompt (it is padded) must be the
    one it gets alone (no padding): the padding is on the left and masked out. The same call twice
    gives the same texts, and the tokenizer's own padding side is left as it was."""
    from trainer.models import load_causal_lm
    from trainer.text import train

    model, tokenizer = load_causal_lm(tiny_llama)
    prompts, side = ["To be", "Line 3 of the longest prompt here, by many tokens"], tokenizer.padding_side
    sampled = train.generate(model, tokenizer, prompts, 8, seed=0)
    assert sampled == train.generate(model, tokenizer, prompts, 8, seed=0) and len(sampled) == 2
    assert tokenizer.padding_side == side
    monkeypatch.setattr(train, "SAMPLE_TEMPERATURE", 1e-4)
    together = train.generate(model, tokenizer, prompts, 8, seed=0)
    alone = [train.generate(model, tokenizer, [p], 8, seed=0)[0] for p in prompts]
    assert together == alone and all(together)


def test_events_are_structured(finished_run):
    _, events, _ = finished_run
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 25))
    assert all(e.total_steps == 24 and e.lr > 0 and e.tokens_per_s > 0 and e.eta_s >= 0 for e in steps)
    assert steps[-1].tokens > steps[0].tokens > 0
    logged = (finished_run[0].run_dir / "events.jsonl").read_text().splitlines()
    assert len(logged) == len(events)


def test_adapter_loads_back_and_changes_outputs(finished_run, tiny_llama):
    from trainer.models import load_causal_lm
    from trainer.text.sample import load_run_model, sample_run

    result, _, _ = finished_run
    tuned, tokenizer, _ = load_run_model(result.run_dir)
    base, _ = load_causal_lm(tiny_llama)
    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        delta = (tuned(input_ids=ids).logits - base(input_ids=ids).logits).abs().max().item()
    assert delta > 1e-3
    rows = sample_run(result.run_dir, ["To be, or not"], seed=3, max_new_tokens=6, count=2)
    assert [r["seed"] for r in rows] == [3, 4] and all(isinstance(r["text"], str) for r in rows)


def test_resume_continues_exactly(tiny_llama, text_file, tmp_path):
    """A run cancelled at step 12 and resumed ends where an uninterrupted run ends, loss for loss."""
    straight = []
    train_text(tiny_config(tiny_llama, text_file, tmp_path / "straight", augment=0.5, lora_dropout=0.1),
               on_event=straight.append)

    token = CancelToken(tmp_path / "split" / "CANCEL")
    first = []

    def cancel_at_12(event):
        first.append(event)
        if event.kind == "step" and event.step == 12:
            token.cancel()

    config = tiny_config(tiny_llama, text_file, tmp_path / "split", augment=0.5, lora_dropout=0.1)
    with pytest.raises(Cancelled):
        train_text(config, on_event=cancel_at_12, cancel=token)
    assert (tmp_path / "split" / "checkpoints" / "step-000012" / "state.json").exists()
    assert json.loads((tmp_path / "split" / "metrics.json").read_text())["status"] == "cancelled"

    second = []
    result = train_text(config.model_copy(update={"resume": True}), on_event=second.append)
    resumed_steps = [e for e in second if e.kind == "step"]
    assert resumed_steps[0].step == 13 and result.steps_done == 24
    expected = {e.step: e.loss for e in straight if e.kind == "step"}
    for event in resumed_steps:
        assert event.loss == pytest.approx(expected[event.step], rel=1e-4, abs=1e-5)
    assert result.val_loss == pytest.approx(min(e.val_loss for e in straight if e.kind == "eval"), rel=1e-4)


def test_early_stopping_keeps_best_adapter(tiny_llama, text_file, tmp_path):
    # min_delta this large means no evaluation after the first counts as an improvement.
    events = []
    result = train_text(tiny_config(tiny_llama, text_file, tmp_path / "run", steps=40, eval_every=4,
                                    patience=2, min_delta=100.0), on_event=events.append)
    assert result.stop_reason == "early_stopped"
    assert result.steps_done == 12 and result.best_step == 4
    assert any(e.kind == "stopped_early" for e in events)


def test_the_kept_adapter_holds_the_best_steps_weights(tiny_llama, text_file, tmp_path):
    """An early-stopped run's adapter file is its best step's weights, not its last step's: the same
    run stopped at that step (constant rate, no warm-up, so the steps are the same) wrote them."""
    from safetensors.torch import load_file

    quiet = dict(eval_every=4, lr_scheduler="constant", warmup_ratio=0.0)
    stopped = train_text(tiny_config(tiny_llama, text_file, tmp_path / "stopped", steps=40, patience=2,
                                     min_delta=100.0, **quiet))
    at_best = train_text(tiny_config(tiny_llama, text_file, tmp_path / "at-best", steps=4, **quiet))
    assert stopped.best_step == 4 and stopped.steps_done == 12 and at_best.steps_done == 4
    kept, best = (load_file(str(tmp_path / run / "adapter" / "adapter_model.safetensors"))
                  for run in ("stopped", "at-best"))
    assert kept.keys() == best.keys()
    for name in kept:
        assert torch.allclose(kept[name], best[name], rtol=1e-5, atol=1e-7), name
    assert any(not torch.allclose(kept[name], best[name] * 0) for name in kept if "lora_B" in name)  # trained


def test_chat_and_completion_data_train(tiny_llama, tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = []
    for i in range(6):
        rows.append({"messages": [{"role": "user", "content": f"Say line {i}."},
                                  {"role": "assistant", "content": f"The quick brown fox {i}."}]})
        rows.append({"prompt": f"Question {i}: ", "completion": f"all that glitters {i}"})
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    result = train_text(tiny_config(tiny_llama, data, tmp_path / "run", steps=4, eval_every=2))
    assert result.steps_done == 4
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["data_report"]["kinds"] == {"chat": 6, "completion": 6}


def test_bad_inputs_fail_before_training(tiny_llama, text_file, tmp_path):
    few = tmp_path / "few.txt"
    few.write_text("one\n\ntwo\n\nthree\n", encoding="utf-8")
    with pytest.raises(DataError, match="5"):
        train_text(tiny_config(tiny_llama, few, tmp_path / "a"))
    with pytest.raises(ModelError, match="Unknown base model"):
        train_text(tiny_config(tiny_llama, text_file, tmp_path / "b", base="no such model"))
    with pytest.raises(ConfigError, match="no checkpoint"):
        train_text(tiny_config(tiny_llama, text_file, tmp_path / "c", resume=True))
    with pytest.raises(ConfigError, match="lr"):
        TextTrainConfig.build(data=[str(text_file)], out="x", lr=-1)
    with pytest.raises(ConfigError, match="eval_every"):
        TextTrainConfig.build(data=[str(text_file)], out="x", steps=5, eval_every=10)
    assert not (tmp_path / "a" / "adapter").exists()


def test_finished_run_is_not_overwritten(finished_run, tiny_llama):
    result, _, data = finished_run
    before = (result.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a finished run"):
        train_text(tiny_config(tiny_llama, data, result.run_dir))
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_nan_loss_stops_with_advice(tiny_llama, text_file, tmp_path):
    from trainer.errors import TrainingError

    with pytest.raises(TrainingError, match="--lr"):
        train_text(tiny_config(tiny_llama, text_file, tmp_path / "run", lr=1.0, steps=30, max_grad_norm=1e9,
                               eval_every=30, weight_decay=0.0, rank=64, alpha=1e6))
