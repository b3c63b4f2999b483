"""An adapter folder leaves the machine with a real model card and no path of the machine.

A text run on the tiny Llama and an image run on the tiny SD pipeline write ``adapter/README.md``
(a card huggingface_hub reads, naming the base as others load it, with the run's settings, data,
results and samples) and name that base in ``adapter_config.json``; the card's loading code runs
as written. ``/adapter export`` rewrites adapters stored before runs wrote a card.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from safetensors import safe_open

from bot.cogs.adapter import file_size
from tests.conftest import train_tiny_text
from tests.bot_world import *  # noqa: F401,F403
from tests.image_fixtures import RESOLUTION, image_folder, tiny_sd  # noqa: F401
from trainer.card import model_card, write_card
from trainer.models import BUILTIN_HUB_IDS, BUILTIN_TEXT_MODELS, cache_dir, loadable_name
from trainer.rundir import RunDir

SMOLLM_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# peft's card template as save_pretrained wrote it before runs wrote their own: the base is the
# worker's cache folder of the converted built-in model.
PEFT_README = """---
base_model: /root/.cache/loracord/models/smollm2-135m
library_name: peft
---

# Model Card for Model ID

<!-- Provide a quick summary of what the model is/does. -->

### Framework versions

- PEFT 0.13.2
"""


def host_paths(text: str, *roots) -> list[str]:
    """The paths of this machine that ``text`` mentions."""
    places = {str(r) for r in (*roots, Path.home(), cache_dir())} | {"/root/", "/tmp/", "/home/"}
    return sorted(p for p in places if p in text)


def python_block(card_text: str) -> str:
    return re.search(r"```python\n(.*?)\n```", card_text, re.S).group(1)


# ---------------------------------------------------------------- the base, as others load it


@pytest.mark.parametrize("ref, name", [
    ("smollm2-135m", SMOLLM_HUB_ID),
    ("SmolLM2-135M", SMOLLM_HUB_ID),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", SMOLLM_HUB_ID),
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ("/srv/models/tiny-llama", "tiny-llama"),
    ("/srv/models/tiny-llama/", "tiny-llama"),
    ("~/models/SmolLM2.Q4_K_M.gguf", "SmolLM2.Q4_K_M.gguf"),
    ("C:\\models\\my-sd", "my-sd"),
    ("tiny-llama", "tiny-llama"),
])
def test_the_base_is_named_as_others_load_it(ref, name):
    assert loadable_name(ref) == name


def test_every_built_in_model_names_its_hub_id():
    assert set(BUILTIN_HUB_IDS) == set(BUILTIN_TEXT_MODELS)
    assert loadable_name("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_local_folder_spelled_like_a_hub_id_is_named_by_its_folder(tmp_path, monkeypatch):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert loadable_name("models/tiny") == "tiny"


# ---------------------------------------------------------------- a text run's card


@pytest.fixture(scope="module")
def text_run(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("card-text")
    return train_tiny_text(root, tiny_llama, steps=6, eval_every=3,
                           prompts=["To be", f"The notes in {root}/private/notes.txt say"]), root


def test_a_text_run_writes_a_card_huggingface_hub_reads(text_run):
    result, _ = text_run
    adapter = result.run_dir / "adapter"
    assert {p.name for p in adapter.iterdir()} == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"lora", "loracord", "peft"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local folder is no hub id: named in the text only
    assert "# Text LoRA adapter for tiny-llama" in card.text
    assert "a local folder named `tiny-llama`" in card.text


def test_a_text_card_holds_the_runs_settings_data_results_and_samples(text_run):
    result, _ = text_run
    text = (result.run_dir / "adapter" / "README.md").read_text()
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert "| rank | 4 |" in text and "| alpha | 8 |" in text and "| lr | 0.005 |" in text
    assert "| steps | 6 |" in text and "| precision | fp32 |" in text
    report = metrics["data_report"]
    assert f"- {report['n_train']} training examples, {report['n_val']} held out for validation" in text
    assert f"- best validation loss: {metrics['best_val_loss']:.4f}, at step {metrics['best_step']}" in text
    assert f"- validation perplexity: {metrics['val_perplexity']:.2f}" in text
    samples = json.loads((result.run_dir / "samples.json").read_text())
    assert "To be" in text and samples[0]["after"] in text and samples[0]["before"] in text
    assert "The notes in notes.txt say" in text  # a prompt's host path, cut to its last part


def test_a_text_adapter_carries_no_path_of_the_machine(text_run, tiny_llama):
    result, root = text_run
    adapter = result.run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"
    for name in ("README.md", "adapter_config.json"):
        assert host_paths((adapter / name).read_text(), root, tiny_llama, result.run_dir) == [], name


def test_the_text_cards_code_loads_the_adapter_as_written(text_run, tiny_llama, tmp_path, monkeypatch, capsys):
    """Run in a copy of the adapter folder, with the base's name pointed at the local tiny model."""
    from peft import PeftModel

    result, _ = text_run
    folder = shutil.copytree(result.run_dir / "adapter", tmp_path / "downloaded-adapter")
    code = python_block((folder / "README.md").read_text())
    assert code.count('"tiny-llama"') == 2 and 'PeftModel.from_pretrained(base, ".")' in code
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(code.replace('"tiny-llama"', json.dumps(str(tiny_llama))), scope)
    assert isinstance(scope["model"], PeftModel) and scope["model"].peft_config["default"].r == 4
    assert capsys.readouterr().out.startswith("To be")


def test_a_built_in_base_is_named_by_its_hub_id_in_card_and_config(tmp_path):
    """A run on the built-in model (no download here: its run folder as a worker wrote it before)."""
    run = RunDir(tmp_path / "run")
    run.adapter.mkdir(parents=True)
    cached = "/root/.cache/loracord/models/smollm2-135m"
    (run.adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": cached, "r": 8}))
    (run.adapter / "README.md").write_text(PEFT_README)
    run.write_metrics({"kind": "text", "base": "smollm2-135m", "base_path": cached, "best_val_loss": 2.0,
                       "best_step": 40, "val_perplexity": 7.39, "steps_done": 40, "stop_reason": "completed",
                       "config": {"rank": 8, "alpha": 16.0, "lr": 8e-4, "steps": 40, "out": str(run.root),
                                  "data": [str(tmp_path / "data.txt")]},
                       "data_report": {"n_train": 36, "n_val": 4}, "text_kind": "prose",
                       "text_kind_reason": f"read from {tmp_path}/data.txt"})
    write_card(run)
    assert json.loads((run.adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == SMOLLM_HUB_ID
    card = ModelCard.load(run.adapter / "README.md")
    assert card.data.base_model == SMOLLM_HUB_ID and "loracord" in card.data.tags
    assert f'AutoModelForCausalLM.from_pretrained("{SMOLLM_HUB_ID}")' in card.text
    assert "`SmolLM2-135M-Instruct.Q4_1.gguf`" in card.text  # what it was trained on, exactly
    assert host_paths(card.content, tmp_path, cached) == []
    assert "read from data.txt" in card.text


def test_a_card_for_the_hub_names_the_adapter_by_its_repository():
    card = model_card({"kind": "text", "base": SMOLLM_HUB_ID}, adapter="someone/fox-lora")
    assert 'PeftModel.from_pretrained(base, "someone/fox-lora")' in card.text


# ---------------------------------------------------------------- an image run's card


@pytest.fixture(scope="module")
def image_run(tiny_sd, image_folder, tmp_path_factory):
    from trainer.image.config import ImageTrainConfig
    from trainer.image.train import train_image

    root = tmp_path_factory.mktemp("card-image")
    config = ImageTrainConfig(data=[str(image_folder)], out=str(root / "out"), base=str(tiny_sd), resolution=RESOLUTION,
                              steps=4, rank=4, batch_size=2, eval_every=2, sample_every=0, sample_steps=1,
                              sample_seeds=[0], sample_prompts=["a photo of sks"], min_image_side=16, augment=0.0,
                              augment_variants=1, precision="fp32", threads=1)
    return train_image(config), root


def test_an_image_run_writes_a_card_for_diffusers_and_kohya(image_run, tiny_sd):
    result, _ = image_run
    adapter = result.run_dir / "adapter"
    assert {p.name for p in adapter.iterdir()} == {"README.md", "pytorch_lora_weights.safetensors",
                                                   "lora_kohya.safetensors"}
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    assert {"lora", "loracord", "stable-diffusion"} <= set(card.data.tags)
    assert f"# Image LoRA adapter for {tiny_sd.name}" in card.text
    assert f'DiffusionPipeline.from_pretrained("{tiny_sd.name}")' in card.text
    assert 'pipe.load_lora_weights(".", weight_name="pytorch_lora_weights.safetensors")' in card.text
    assert "`lora_kohya.safetensors` is the same LoRA in kohya's format, for AUTOMATIC1111, ComfyUI" in card.text
    assert "| rank | 4 |" in card.text and "| alpha | 4 |" in card.text and "| resolution | 32 |" in card.text
    report = json.loads((result.run_dir / "metrics.json").read_text())["data_report"]
    assert f"- {report['train_images']} training images, {report['val_images']} held out" in card.text
    assert "- `samples/final.png`" in card.text and "1. `a photo of sks`" in card.text


def test_an_image_adapter_carries_no_path_of_the_machine(image_run, tiny_sd, image_folder):
    result, root = image_run
    adapter = result.run_dir / "adapter"
    assert host_paths((adapter / "README.md").read_text(), root, tiny_sd, image_folder) == []
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        with safe_open(str(adapter / name), "pt") as f:
            metadata = json.dumps(f.metadata())
        assert host_paths(metadata, root, tiny_sd, image_folder) == [], name


def test_the_image_cards_code_loads_the_adapter_as_written(image_run, tiny_sd, tmp_path, monkeypatch):
    result, _ = image_run
    folder = shutil.copytree(result.run_dir / "adapter", tmp_path / "downloaded-adapter")
    code = python_block((folder / "README.md").read_text())
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(code.replace(json.dumps(tiny_sd.name), json.dumps(str(tiny_sd))), scope)
    assert "default_0" in scope["pipe"].unet.peft_config and (folder / "sample.png").is_file()


# ---------------------------------------------------------------- /adapter export


@pytest.mark.parametrize("size, shown", [(3391488, "4 MB"), (2**20, "1 MB"), (2**20 - 1, "1024 KB"), (10, "1 KB")])
def test_sizes_are_shown_as_the_file_card_shows_them(size, shown):
    assert file_size(size) == shown


@pytest.mark.asyncio
async def test_export_of_an_adapter_stored_before_cards_names_the_base_and_carries_no_path(world, tmp_path):
    """An adapter a worker stored before runs wrote their card: peft's template README and a
    config naming the worker's cache folder. The zip names the hub id and holds loracord's card."""
    await world.alice.slash(world.channel, "session new", kind="text", title="Old fox")
    thread = world.channel.threads[-1]
    services, db = world.env.bot.services, world.env.bot.services.db
    session = db.session_by_thread(thread.id)
    folder = tmp_path / "worker" / "runs" / "job-1" / "adapter"
    folder.mkdir(parents=True)
    cached = "/root/.cache/loracord/models/smollm2-135m"
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": cached, "peft_type": "LORA",
                                                            "r": 8}, indent=2))
    (folder / "README.md").write_text(PEFT_README)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    metrics = {"kind": "text", "base": "smollm2-135m", "base_path": cached, "best_val_loss": 1.5, "best_step": 30,
               "steps_done": 30, "stop_reason": "completed", "val_perplexity": 4.48,
               "config": {"rank": 8, "alpha": 16.0, "lr": 8e-4, "steps": 30, "out": str(folder.parent)},
               "data_report": {"n_train": 11, "n_val": 1}}
    samples = [{"prompt": "Once", "before": "upon", "after": "a fox"}]
    job = db.enqueue_job("train_text", {"base": "smollm2-135m"}, session_id=session.id, guild_id=world.guild.id,
                         user_id=world.alice.id)
    db.mark_job_running(job.id, worker="w", attempt=1)
    files = {"metrics.json": services.blobs.put_bytes(json.dumps(metrics).encode()),
             "samples.json": services.blobs.put_bytes(json.dumps(samples).encode())}
    db.finish_job(job.id, "done", attempt=1, result={"files": files})
    stored = services.blobs.put_tree(folder)
    db.add_adapter(job_id=job.id, session_id=session.id, base_model="smollm2-135m", blob_hash=stored,
                   metrics={"kind": "text", "best_val_loss": 1.5})

    exported = await world.alice.slash(thread, "adapter export", job=job.id)
    message = exported.followups[0] if exported.followups else exported.response
    attachment = message.attachments[0]
    assert message.content.startswith(f"📦 Adapter of job #{job.id} ({file_size(attachment.size)}), a LoRA for "
                                      f"`{SMOLLM_HUB_ID}`: its README.md shows how to load it with peft.")
    with zipfile.ZipFile(io.BytesIO(await attachment.read())) as archive:
        assert sorted(archive.namelist()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        config = json.loads(archive.read("adapter_config.json"))
        card = archive.read("README.md").decode()
        assert archive.read("adapter_model.safetensors") == b"weights"
    assert config == {"base_model_name_or_path": SMOLLM_HUB_ID, "peft_type": "LORA", "r": 8}
    parsed = ModelCard(card)
    assert parsed.data.base_model == SMOLLM_HUB_ID and "loracord" in parsed.data.tags
    assert "- best validation loss: 1.5000, at step 30" in card and "a fox" in card
    assert host_paths(card + json.dumps(config), tmp_path, cached, services.settings.data_dir) == []
    kept = services.blobs.tree_files(stored)  # the stored blobs stay as they were
    assert json.loads(services.blobs.get_bytes(kept["adapter_config.json"]))["base_model_name_or_path"] == cached
