"""``lr_scheduler``, a setting declared once (``trainer.config.TrainConfig``): it shapes the
learning-rate curve of real tiny runs of both kinds, typed on either CLI and chosen in
``/train start``, and the run's metrics.json records it with the rest of its config."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bot.config import BotSettings
from loracord.cli import app
from storage import jobkinds
from storage.jobrun import run_job
from tests.bot_world import *  # noqa: F401,F403
from tests.image_fixtures import RESOLUTION, image_bytes, image_folder, pattern_image, tiny_sd  # noqa: F401
from trainer.checkpoint import lr_factor
from trainer.rundir import RunDir
from trainer.spec import RunSpec

LR, STEPS, WARMUP = 1e-3, 6, 0.34  # two warm-up steps, four after them
TEXT_RUN = ["--steps", str(STEPS), "--lr", str(LR), "--warmup-ratio", str(WARMUP), "--patience", "0",
            "--seq-len", "64", "--batch-size", "2", "--max-new-tokens", "4", "--prompt", "To be", "--precision",
            "fp32", "--threads", "1"]
IMAGE_RUN = ["--steps", str(STEPS), "--lr", str(LR), "--warmup-ratio", str(WARMUP), "--patience", "0",
             "--resolution", str(RESOLUTION), "--sample-every", "0", "--sample-steps", "2", "--sample-seed", "0",
             "--augment-variants", "1", "--precision", "fp32", "--threads", "1"]


def expected(schedule: str, steps: int = STEPS) -> list[float]:
    """The rate after each optimizer step of a run with this schedule."""
    warmup = int(WARMUP * steps)
    return [LR * lr_factor(step, warmup, steps, schedule) for step in range(1, steps + 1)]


def lr_curve(run) -> tuple[str, list[float]]:
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics["config"]["lr_scheduler"], [lr for _, lr in metrics["curves"]["lr"]]


def test_the_schedules_share_the_warm_up_and_part_after_it():
    warm = [lr_factor(s, 2, 6, name) for name in ("cosine", "linear", "constant") for s in (0, 1)]
    assert warm == [1 / 3, 2 / 3] * 3
    assert [lr_factor(s, 2, 6, "constant") for s in range(2, 7)] == [1.0] * 5
    assert [round(lr_factor(s, 2, 6, "linear"), 3) for s in range(2, 7)] == [1.0, 0.775, 0.55, 0.325, 0.1]
    assert lr_factor(6, 2, 6, "cosine") == pytest.approx(0.1) and lr_factor(4, 2, 6, "cosine") == pytest.approx(0.55)


def test_text_cli_lr_scheduler_changes_the_curve(tiny_llama, text_file, tmp_path):
    runner = CliRunner()
    for schedule, extra in (("cosine", []), ("linear", ["--lr-scheduler", "linear"])):
        run = tmp_path / schedule
        result = runner.invoke(app, ["train", "text", str(text_file), "--out", str(run), "--base", str(tiny_llama),
                                     *TEXT_RUN, *extra])
        assert result.exit_code == 0, result.output
        assert lr_curve(run) == (schedule, pytest.approx(expected(schedule)))
    assert expected("linear") != pytest.approx(expected("cosine"))


def test_image_cli_lr_scheduler_changes_the_curve(tiny_sd, image_folder, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "image", str(image_folder), "--base", str(tiny_sd), "--out", str(run),
                                      *IMAGE_RUN, "--lr-scheduler", "constant"])
    assert result.exit_code == 0, result.output
    assert lr_curve(run) == ("constant", pytest.approx(expected("constant")))
    assert expected("constant") != pytest.approx(expected("cosine"))


def test_a_bad_schedule_is_the_configs_one_error_line(tmp_path, text_file):
    result = CliRunner().invoke(app, ["train", "text", str(text_file), "--out", str(tmp_path / "run"),
                                      "--lr-scheduler", "exponential"])
    assert result.exit_code != 0 and "lr_scheduler: Input should be 'cosine', 'linear' or 'constant'" in str(
        result.exception)


# ---- /train start lr_scheduler: through SimCord, then the job run as the worker runs it

@pytest.fixture
def bot_config(tiny_llama, tiny_sd) -> BotSettings:
    quiet = {"precision": "fp32", "patience": 0, "warmup_ratio": WARMUP}
    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama), f"image:{tiny_sd}"], progress_edit_s=0,
                       train_cooldown_s=0, train_threads=1,
                       text_train_defaults={**quiet, "seq_len": 64, "batch_size": 2, "max_new_tokens": 4,
                                            "augment": 0.0, "prompts": ["To be"]},
                       image_train_defaults={**quiet, "resolution": RESOLUTION, "sample_steps": 2,
                                             "sample_seeds": [0], "sample_every": 0, "augment_variants": 1})


def run_the_job(world, tmp_path, schedule: str):
    """Run the newest job as the worker does (fetch its inputs, then its kind's run function),
    after checking its stored run spec holds the member's schedule."""
    job = world.env.bot.services.db.list_jobs()[-1]
    assert RunSpec.from_job(job.kind, job.config).settings["lr_scheduler"] == schedule
    run = RunDir(tmp_path / f"job-{job.id}")
    config = jobkinds.get(job.kind).prepare_inputs(world.env.bot.services.blobs, run, job.config)
    assert run_job(job.kind, config, run, resume=False)["status"] == "done"
    return run.root


@pytest.mark.asyncio
@pytest.mark.parametrize("kind, schedule", [("text", "linear"), ("image", "constant")])
async def test_train_start_lr_scheduler_reaches_the_trainer(world, tiny_llama, tiny_sd, tmp_path, kind, schedule):
    base = tiny_llama if kind == "text" else tiny_sd
    await world.alice.slash(world.channel, "session new", kind=kind, title="Curves", base_model=str(base))
    thread = world.channel.threads[-1]
    if kind == "text":
        await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    else:
        for seed in range(5):  # the bot refuses images under 64 px
            png = image_bytes(pattern_image(seed, (72, 64)))
            await world.alice.slash(thread, "data add", file=(f"p{seed}.png", png))
    started = await world.alice.slash(thread, "train start", steps=STEPS, lr=LR, lr_scheduler=schedule)
    assert not started.ephemeral, started.response.content
    assert lr_curve(run_the_job(world, tmp_path, schedule)) == (schedule, pytest.approx(expected(schedule)))
