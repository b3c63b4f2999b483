"""`/sample` as a job on a worker: a trial of quick tries and a finished run, sampled by a worker
on another machine that shares only the Redis queue and the blob store with the bot.

The bot (SimCord, no embedded worker) keeps its own data folder; the worker is a real
``storage.worker`` process with a data folder of its own, as a GPU machine would have. It runs
the search, publishes every complete trial's adapter to the blob store, then serves the sample
jobs from those blobs. The posted samples are checked as members see them: the source (job and
trial), the seed and the prompt, cleaned of pings.
"""

from __future__ import annotations

import os

import pytest

from bot.config import BotSettings
from bot.sampling import clean_sample
from storage.db import DONE
from storage.settings import Settings
from storage.worker import start_worker_process
from tests.bot_world import *  # noqa: F401,F403
from tests.image_fixtures import image_folder, tiny_sd  # noqa: F401
from tests.test_scores import tiny_clip  # noqa: F401
from trainer.scores import UNAVAILABLE

@pytest.fixture
def storage_settings(tmp_path, redis) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "bot", queue_url=redis, queue_name=f"s{os.getpid()}",
                    blob_url=f"file://{tmp_path / 'shared-blobs'}", heartbeat_s=0.2, heartbeat_timeout_s=30,
                    cancel_grace_s=1.0, kill_grace_s=0.5, poll_s=0.05, max_jobs_per_user=1, max_jobs_per_guild=2)


@pytest.fixture
def bot_config(tiny_llama) -> BotSettings:
    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama)], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, text_train_defaults={"seq_len": 64, "batch_size": 2, "max_new_tokens": 4,
                                                             "precision": "fp32", "augment": 0.0, "prompts": ["To be"]})


@pytest.fixture
def gpu_machine(storage_settings, tmp_path):
    """A worker with its own data folder: it shares only the queue and the blob store with the bot."""
    machine = storage_settings.model_copy(update={"data_dir": tmp_path / "gpu1"})
    proc = start_worker_process(machine, log_path=tmp_path / "gpu1.log")
    yield machine, proc
    proc.kill()
    proc.wait()


@pytest.mark.asyncio
async def test_a_trial_and_a_finished_run_are_sampled_on_another_machine(world, tiny_llama, gpu_machine, tmp_path):
    machine, worker = gpu_machine
    w, services = world, world.env.bot.services
    db = services.db
    await w.alice.slash(w.channel, "session new", kind="text", title="Far fox", base_model=str(tiny_llama))
    thread = w.channel.threads[-1]
    await w.alice.slash(thread, "data add", file=("fox.txt", text_bytes(16)))
    await w.alice.slash(thread, "train tune", trials=2, steps=5)
    await pump_until(w.env, lambda: db.get_job(1).finished, timeout=300, what="the quick tries")
    tune = db.get_job(1)
    assert tune.status == DONE, tune.error
    assert tune.worker.endswith(f":{worker.pid}")
    trials = [t for t in db.list_trials(1) if t.status == "complete"]
    assert trials and all(t.adapter and t.metrics for t in trials)  # published to the blob store
    assert not (services.settings.run_root / "job-1").exists()  # the search ran on the other machine only

    # One trial, by number: a sample job that a worker serves from the trial's blobs.
    trial = trials[-1].number
    asked = await w.alice.slash(thread, "sample", prompt="To be @everyone", job=1, trial=trial, seed=5)
    assert not asked.ephemeral
    assert asked.response.content.startswith(f"🎲 Sampling 1 from trial #{trial} of job #1 (seed 5)")
    assert "a worker runs it beside any training" in asked.response.content
    sample_job = next(j for j in db.list_jobs() if j.kind == "sample")
    assert sample_job.session_id is None and sample_job.priority > tune.priority  # not a run; ahead of runs
    # the one asked for: the search itself may have sampled this trial (the best one's samples), at seed 0
    await pump_until(w.env, lambda: any(s.trial == trial and s.seed == 5 for s in db.list_samples(job_id=1)),
                     timeout=120, what="the trial's sample")
    sample_job = db.get_job(sample_job.id)
    assert sample_job.status == DONE and sample_job.worker.endswith(f":{worker.pid}")
    fetched = machine.run_root / f"job-{sample_job.id}" / "source" / "adapter"
    assert (fetched / "adapter_config.json").is_file()  # rebuilt there from the blob store
    assert not (services.settings.run_root / f"job-{sample_job.id}").exists()
    [sample] = [s for s in db.list_samples(job_id=1) if s.trial == trial and s.seed == 5]
    assert (sample.prompt, sample.seed, sample.kind, sample.session_id) == ("To be @everyone", 5, "text",
                                                                           tune.session_id)
    posted = thread.last_message
    assert posted.content.startswith(f"**Sample #{sample.id}** (job #1, trial #{trial}, seed 5) · prompt: "
                                     f"To be @\u200beveryone")
    assert "```" in posted.content and "@everyone" not in posted.content
    assert [c.custom_id for row in posted.components for c in row.children] == [f"lc:vote:{sample.id}:up",
                                                                                 f"lc:vote:{sample.id}:down"]
    text = services.blobs.get_bytes(sample.blob_hash).decode("utf-8", "replace")  # what the trial's adapter wrote
    assert clean_sample(text) and clean_sample(text)[:40] in posted.content  # posted cleaned
    # its scores, computed by the sample job against the run's training split, are posted under it
    assert "longest run copied from the training text" in posted.content.split("```")[-1]
    assert set(sample.scores) >= {"score_copied_words", "score_heldout_ppl"}

    # The finished run (the search's full run of the best settings), two samples from seed 9.
    await w.env.advance_time(6)  # /sample has a 5 s cooldown per member
    before = {s.id for s in db.list_samples(job_id=1)}
    asked = await w.alice.slash(thread, "sample", prompt="Out, damned", job=1, count=2, seed=9)
    assert asked.response.content.startswith("🎲 Sampling 2 from job #1 (seed 9)")
    await pump_until(w.env, lambda: len({s.id for s in db.list_samples(job_id=1)} - before) == 2, timeout=120,
                     what="the run's samples")
    new = [s for s in db.list_samples(job_id=1) if s.id not in before]
    assert [(s.trial, s.seed, s.prompt) for s in new] == [(None, 9, "Out, damned"), (None, 10, "Out, damned")]
    await w.env.advance_time(1)
    shown = [m.content for m in thread.history()[-2:]]
    assert [c.split(" · ")[0] for c in shown] == [f"**Sample #{new[0].id}** (job #1, seed 9)",
                                                  f"**Sample #{new[1].id}** (job #1, seed 10)"]
    runs = [j for j in db.list_jobs() if j.kind == "sample"]
    assert len(runs) == 2 and all(j.worker.endswith(f":{worker.pid}") for j in runs)
    # sample jobs are not runs of the session: its job list and /train status leave them out
    assert [j.id for j in db.list_jobs(session_id=tune.session_id)] == [1]


def test_an_image_run_is_sampled_by_the_sample_kind_from_its_blobs(tiny_sd, image_folder, tmp_path, tiny_clip,
                                                                   monkeypatch):
    """The ``sample`` kind as a worker runs it, for an image run: the adapter and metrics come from
    the blob store into a fresh run folder, the job process draws one grid per prompt, and the
    worker publishes each grid as a sample of the source job."""
    from PIL import Image

    from storage import jobkinds
    from storage.blobs import BlobStore
    from storage.jobrun import run_job
    from tests.image_fixtures import RESOLUTION
    from trainer.image.train import ImageTrainConfig, train_image
    from trainer.rundir import RunDir

    trained = tmp_path / "trained-elsewhere"
    train_image(ImageTrainConfig(data=[str(image_folder)], out=str(trained), base=str(tiny_sd), resolution=RESOLUTION,
                                 steps=2, rank=4, batch_size=2, eval_every=2, sample_every=0, sample_steps=2,
                                 sample_seeds=[0], min_image_side=16, augment=0.0, precision="fp32"))
    blobs = BlobStore(str(tmp_path / "blobs"))
    config = {"source_job": 4, "trial": None, "kind": "image", "base": str(tiny_sd),
              "adapter": blobs.put_tree(trained / "adapter"), "metrics": blobs.put_file(trained / "metrics.json"),
              "prompts": ["a photo of sks", "a red sks"], "count": 2, "seed": 3}
    kind = jobkinds.get("sample")
    run = RunDir(tmp_path / "worker" / "job-9")
    run.root.mkdir(parents=True)
    config = kind.prepare_inputs(blobs, run, config)
    result = run_job("sample", config, run, resume=False)
    assert result["status"] == "done"
    assert [(r["prompt"], r["seed"], r["kind"]) for r in result["samples"]] == [("a photo of sks", 3, "image"),
                                                                                ("a red sks", 3, "image")]
    outputs = {"samples": [], "result": result}
    kind.publish_outputs(blobs, run, outputs)
    assert [(s["job"], s["trial"], s["prompt"]) for s in outputs["samples"]] == [(4, None, "a photo of sks"),
                                                                                 (4, None, "a red sks")]
    grid = Image.open(blobs.get_file(outputs["samples"][0]["blob"], tmp_path / "grid.png"))
    assert grid.size == (2 * RESOLUTION, RESOLUTION)  # seeds 3 and 4 side by side
    # no scoring model named: each grid says its scores are unavailable, never a number
    assert [s["scores"] for s in outputs["samples"]] == [{"scores_unavailable": UNAVAILABLE}] * 2
    # with the server's scoring model, each grid's cells are scored against its prompt
    from storage.jobkinds.sample import sample_scores
    from trainer import kinds

    scored = sample_scores({**config, "scorer": str(tiny_clip)}, run.root, result["samples"], kinds.IMAGE)
    assert [set(s) for s in scored] == [{"score_adherence"}] * 2  # no held-out images at hand: no likeness
    # with the run's dataset at hand (as the bot names it), also against the images the run held out
    scored = sample_scores({**config, "scorer": str(tiny_clip), "data": [str(image_folder)]}, run.root,
                           result["samples"], kinds.IMAGE)
    assert [set(s) for s in scored] == [{"score_adherence", "score_likeness"}] * 2
    assert all(-1.0 <= s["score_likeness"] <= 1.0 for s in scored)
    # a scorer that breaks on the worker costs the samples their numbers, not the samples: the
    # scoring function is made to raise here (a stand-in: no tiny model fails this way on demand)
    from trainer import scores as scores_module

    def broken(*args, **kwargs):
        raise RuntimeError("the scoring model broke")

    monkeypatch.setattr(scores_module, "image_scores", broken)
    again = RunDir(tmp_path / "worker" / "job-10")
    again.root.mkdir(parents=True)
    config = kind.prepare_inputs(blobs, again, {**config, "scorer": str(tiny_clip)})
    result = run_job("sample", config, again, resume=False)
    assert result["status"] == "done" and len(result["samples"]) == 2
    assert all((again.root / r["file"]).is_file() for r in result["samples"])
    assert all("scoring failed" in r["scores"]["scores_unavailable"] for r in result["samples"])
