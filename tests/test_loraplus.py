"""``loraplus_ratio`` (LoRA+, a setting declared once in ``trainer.config.TrainConfig``): the B
matrices learn at that many times the learning rate, the A matrices at the rate itself.

After one optimizer step from peft's initialisation (B = 0, so A has no gradient yet), AdamW moves
each B entry by about its learning rate times the sign of its gradient, and the gradients of two
runs of the same seed are the same. So a run at ratio R ends its first step with B equal to R
times the B of a plain-LoRA run and A untouched: the tests read that off the adapter files a
member downloads, for runs typed on the CLI as the README shows it, and through /train start."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from bot.config import BotSettings
from loracord.cli import app
from storage import jobkinds
from storage.jobrun import run_job
from tests.bot_world import *  # noqa: F401,F403
from tests.image_fixtures import RESOLUTION, image_folder, tiny_sd  # noqa: F401
from trainer.cancel import CancelToken
from trainer.errors import Cancelled
from trainer.rundir import RunDir
from trainer.text.config import TextTrainConfig
from trainer.text.train import train_text

LR = 1e-3
ONE_STEP = ["--steps", "1", "--lr", str(LR), "--warmup-ratio", "0", "--lr-scheduler", "constant", "--patience", "0",
            "--precision", "fp32", "--threads", "1"]
TEXT = ["--seq-len", "64", "--batch-size", "2", "--max-new-tokens", "2", "--prompt", "To be", "--rank", "4"]
IMAGE = ["--resolution", str(RESOLUTION), "--sample-every", "0", "--sample-steps", "2", "--sample-seed", "0",
         "--augment-variants", "1", "--rank", "4"]


def lora_weights(path) -> tuple[dict, dict]:
    """(A, B) tensors of an adapter file, keyed by layer: peft's names (lora_A / lora_B) or the
    diffusers file's (lora.down / lora.up)."""
    weights = load_file(str(path))
    a = {k: v for k, v in weights.items() if "lora_A" in k or "lora.down" in k}
    b = {k: v for k, v in weights.items() if "lora_B" in k or "lora.up" in k}
    assert a and len(a) == len(b), sorted(weights)[:4]
    return a, b


def one_step(kind: str, data, base, out, *extra) -> dict:
    result = CliRunner().invoke(app, ["train", kind, str(data), "--base", str(base), "--out", str(out), *ONE_STEP,
                                      *(TEXT if kind == "text" else IMAGE), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def assert_b_scaled(plain, plus, ratio: float):
    (a1, b1), (a2, b2) = lora_weights(plain), lora_weights(plus)
    assert a1.keys() == a2.keys() and b1.keys() == b2.keys()
    for name in a1:  # A has had no gradient yet: the seed's initialisation, on both runs
        assert torch.equal(a1[name], a2[name]), name
    moved = [name for name in b1 if b1[name].abs().max() > 0]
    assert moved, "one step moved no B matrix"
    for name in moved:
        big = b1[name].abs() > 0.5 * LR  # entries whose gradient is far above AdamW's eps
        assert big.any(), name
        assert b2[name][big] == pytest.approx(ratio * b1[name][big], rel=1e-3), name
    largest = max(b1[name].abs().max().item() for name in moved)
    assert largest == pytest.approx(LR, rel=1e-3)  # plain LoRA: the step is the learning rate


def test_text_b_learns_at_the_ratio_times_the_rate(tiny_llama, text_file, tmp_path):
    plain = one_step("text", text_file, tiny_llama, tmp_path / "plain", "--loraplus-ratio", "1")
    default = one_step("text", text_file, tiny_llama, tmp_path / "default")  # text's default: 4
    plus = one_step("text", text_file, tiny_llama, tmp_path / "plus", "--loraplus-ratio", "8")
    assert [m["config"]["loraplus_ratio"] for m in (plain, default, plus)] == [1.0, 4.0, 8.0]
    adapter = "adapter/adapter_model.safetensors"
    assert_b_scaled(tmp_path / "plain" / adapter, tmp_path / "default" / adapter, 4.0)
    assert_b_scaled(tmp_path / "plain" / adapter, tmp_path / "plus" / adapter, 8.0)
    assert "loraplus_ratio" in (tmp_path / "plus" / "adapter" / "README.md").read_text()  # the model card says so


def test_image_default_is_plain_lora_and_the_ratio_applies(tiny_sd, image_folder, tmp_path):
    default = one_step("image", image_folder, tiny_sd, tmp_path / "default")
    plus = one_step("image", image_folder, tiny_sd, tmp_path / "plus", "--loraplus-ratio", "4")
    assert [m["config"]["loraplus_ratio"] for m in (default, plus)] == [1.0, 4.0]
    adapter = "adapter/pytorch_lora_weights.safetensors"
    assert_b_scaled(tmp_path / "default" / adapter, tmp_path / "plus" / adapter, 4.0)


def test_a_ratio_below_one_is_refused_with_the_settings_line(text_file, tmp_path):
    result = CliRunner().invoke(app, ["train", "text", str(text_file), "--out", str(tmp_path / "run"),
                                      "--loraplus-ratio", "0.5"])
    assert result.exit_code != 0
    assert "loraplus_ratio: Input should be greater than or equal to 1" in str(result.exception)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_run_saved_before_the_setting_resumes_as_plain_lora(tiny_llama, text_file, tmp_path):
    """A checkpoint whose config predates ``loraplus_ratio`` trained plain LoRA (one optimizer
    group); resuming it must go on that way, not meet the new default's groups."""
    config = TextTrainConfig(data=[str(text_file)], out=str(tmp_path / "run"), base=str(tiny_llama), steps=4,
                             eval_every=2, lr=LR, seq_len=64, batch_size=2, max_new_tokens=2, precision="fp32",
                             threads=1, loraplus_ratio=1.0, augment=0.0, lora_dropout=0.0, prompts=["To be"])
    token = CancelToken(tmp_path / "run" / "CANCEL")

    def cancel_at_2(event):
        if event.kind == "step" and event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        train_text(config, on_event=cancel_at_2, cancel=token)
    state_file = tmp_path / "run" / "checkpoints" / "step-000002" / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["loraplus_ratio"]  # as an older loracord wrote it
    state_file.write_text(json.dumps(state))

    resumed = TextTrainConfig(data=[str(text_file)], out=str(tmp_path / "run"), base=str(tiny_llama), resume=True)
    result = train_text(resumed)
    assert result.steps_done == 4
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["loraplus_ratio"] == 1.0


# ---- through /train start: the server's defaults reach the trainer

@pytest.fixture
def bot_config(tiny_llama) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama)], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1,
                       text_train_defaults={"precision": "fp32", "patience": 0, "seq_len": 64, "batch_size": 2,
                                            "max_new_tokens": 2, "augment": 0.0, "prompts": ["To be"],
                                            "loraplus_ratio": 2.0})


@pytest.mark.asyncio
async def test_the_servers_ratio_reaches_the_run(world, tiny_llama, tmp_path):
    await world.alice.slash(world.channel, "session new", kind="text", title="Plus", base_model=str(tiny_llama))
    thread = world.channel.threads[-1]
    await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    started = await world.alice.slash(thread, "train start", steps=2)
    assert not started.ephemeral, started.response.content
    job = world.env.bot.services.db.list_jobs()[-1]
    run = RunDir(tmp_path / f"job-{job.id}")
    config = jobkinds.get(job.kind).prepare_inputs(world.env.bot.services.blobs, run, job.config)
    assert run_job(job.kind, config, run, resume=False)["status"] == "done"
    assert json.loads(run.metrics.read_text())["config"]["loraplus_ratio"] == 2.0
