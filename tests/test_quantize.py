"""A quantised frozen base (``quantize``: QLoRA) in both kinds of run, on tiny bases.

On this CPU: a text run loads its base in bitsandbytes' 8-bit and nf4 4-bit (through transformers),
an image run its UNet in torchao's int8 (through diffusers); each trains, and the adapter it writes
loads into the unquantised base (text: ``PeftModel``; image: the export check's fresh float32
pipeline). ``auto`` decides from the base's size and the free memory, both injected here.
A quantisation this machine cannot run is refused before the data is read, naming what is missing.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.bot_world import *  # noqa: F401,F403  (SimCord's world, for the bot test)
from tests.image_fixtures import RESOLUTION, image_folder, tiny_sd  # noqa: F401
from trainer import quantize as q
from trainer.errors import ConfigError
from trainer.image.config import ImageTrainConfig
from trainer.image.export import DIFFUSERS_FILE, KOHYA_FILE
from trainer.image.train import train_image
from trainer.text.config import TextTrainConfig
from trainer.text.train import train_text

GiB = 2**30


def text_config(data, out, base, **kw) -> TextTrainConfig:
    settings = dict(data=[str(data)], out=str(out), base=str(base), steps=12, lr=5e-3, rank=8,
                    target_modules="all-linear", seq_len=64, batch_size=2, eval_every=4, augment=0.0,
                    lora_dropout=0.0, max_new_tokens=4, precision="fp32", threads=1, patience=0)
    return TextTrainConfig(**(settings | kw))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.conftest import TINY_CORPUS

    data = tmp_path_factory.mktemp("quantize-text") / "texts.txt"
    data.write_text("\n\n".join(f"{s} Line {i}." for i, s in enumerate(TINY_CORPUS * 2)), encoding="utf-8")
    return data


@pytest.fixture(scope="module")
def text_runs(tiny_llama, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize-runs")
    # bitsandbytes' 4-bit layers made as on a CPU with AVX-512 BF16, whatever this one has: there
    # they repack themselves for inference at the run's first eval forward (its samples before
    # training) unless loracord keeps the training layout (test below)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bitsandbytes.nn.modules.has_avx512bf16", lambda: True)
        return {mode: train_text(text_config(corpus, root / mode, tiny_llama, quantize=mode))
                for mode in ("8bit", "4bit")}


def test_4bit_layers_keep_the_training_layout_through_an_evaluation():
    """On a CPU with AVX-512 BF16 bitsandbytes repacks a Linear4bit for its inference kernel at the
    first eval forward without gradients, after which no gradient reaches the layer's input (every
    LoRA below it would train wrong). The CPU's flag is forced on here, so the path is taken on any
    CPU; ``keep_training_layout`` switches it off, and the gradient after an evaluation is the one
    before it."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = torch.nn.Sequential(bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4"))
    model[0].weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4").to("cpu")
    model[0].support_avx512bf16_for_cpu = True  # as bitsandbytes sets it on such a CPU
    x = torch.randn(2, 64, requires_grad=True)
    model(x).sum().backward()
    before, x.grad = x.grad.clone(), None
    assert q.keep_training_layout(model) == 1 and not model[0].support_avx512bf16_for_cpu
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 64))
    model.train()
    assert not getattr(model[0].weight.quant_state, "packing_format_for_cpu", False)
    model(x).sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, before)


# --------------------------------------------------------------------------------------------
# text


@pytest.mark.parametrize("mode,layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_a_quantised_text_run_trains_on_the_quantised_base(text_runs, mode, layer):
    result = text_runs[mode]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["quantize"] == mode == metrics["quantize_choice"]["picked"]
    assert metrics["quantize_choice"]["reason"] == f"{mode} was asked for"
    assert "bitsandbytes" in metrics["quantize_choice"]["stack"]
    val = metrics["curves"]["val_loss"]
    assert val[-1][1] < val[0][1]  # it learned
    config = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] and config["r"] == 8
    assert f"| base quantised | {mode} |" in (result.run_dir / "adapter" / "README.md").read_text()


def test_the_quantised_base_is_what_the_run_trained_on(tiny_llama, corpus, tmp_path):
    """The loaded model holds bitsandbytes' 4-bit layers under LoRA, its adapter float32."""
    from trainer.text.train import _setup

    s = _setup(text_config(corpus, tmp_path / "run", tiny_llama, quantize="4bit"))
    layers = {type(m).__name__ for m in s.model.modules()}
    assert "Linear4bit" in layers
    assert all(p.dtype == torch.float32 for p in s.model.parameters() if p.requires_grad)
    assert s.quantize.mode == "4bit"


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_a_quantised_text_adapter_loads_into_the_unquantised_base(text_runs, tiny_llama, mode):
    """The member's download on a machine without bitsandbytes: the plain base and ``PeftModel``."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from trainer.models import load_causal_lm

    run = text_runs[mode].run_dir
    base, tokenizer = load_causal_lm(tiny_llama)
    assert not any("Linear8bitLt" in type(m).__name__ or "Linear4bit" in type(m).__name__ for m in base.modules())
    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) > 0
    for name, tensor in saved.items():  # every saved weight is in the loaded model, as trained
        match = next(p for n, p in loaded.items() if n.replace(".default", "") == name)
        torch.testing.assert_close(match.detach(), tensor)
    with torch.no_grad():
        assert (model(input_ids=ids).logits - before).abs().max() > 1e-3  # and it changes the model


def test_auto_quantises_a_text_base_that_would_not_fit(tiny_llama, corpus, tmp_path, monkeypatch):
    """The free memory is injected: a CPU with almost none left makes auto load the base in 4-bit."""
    params = q.count_params(tiny_llama)
    monkeypatch.setattr(q, "free_memory", lambda device: params * 2)  # fp32 needs 4 bytes a parameter
    result = train_text(text_config(corpus, tmp_path / "auto", tiny_llama, steps=2, eval_every=2))
    choice = result.metrics["quantize_choice"]
    assert result.metrics["quantize"] == choice["picked"] == "4bit"
    assert "would not leave room" in choice["reason"] and choice["params"] == params
    start = json.loads((tmp_path / "auto" / "metrics.json").read_text())["quantize_choice"]
    assert start == choice

    monkeypatch.setattr(q, "free_memory", lambda device: 64 * GiB)
    result = train_text(text_config(corpus, tmp_path / "roomy", tiny_llama, steps=2, eval_every=2))
    assert result.metrics["quantize"] == "none"
    assert "fits this CPU unquantised" in result.metrics["quantize_choice"]["reason"]


def test_the_start_message_says_what_auto_picked_and_why(tiny_llama, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(q, "free_memory", lambda device: 0)
    events = []
    train_text(text_config(corpus, tmp_path / "run", tiny_llama, steps=1, eval_every=1), on_event=events.append)
    start = next(e for e in events if getattr(e, "kind", None) == "start")
    assert "4bit base (bitsandbytes nf4 (transformers)): auto: the base would not leave room" in start.message


# --------------------------------------------------------------------------------------------
# auto, decided from injected facts


@pytest.mark.parametrize("device,kind,params,free,compute,picked", [
    ("cuda", "text", 8_000_000_000, 24 * GiB, 2, "4bit"),    # an 8B base in bf16 (16 GB) on a 24 GB card
    ("cuda", "text", 1_000_000_000, 24 * GiB, 2, "none"),    # a 1B base leaves room
    ("cuda", "image", 12_000_000_000, 24 * GiB, 2, "4bit"),  # FLUX.1's transformer on a 24 GB card
    ("cuda", "image", 12_000_000_000, 80 * GiB, 2, "none"),  # ... on an 80 GB one
    ("cpu", "text", 135_000_000, 8 * GiB, 4, "none"),        # smollm2-135m: slower quantised, so never here
    ("cpu", "text", 8_000_000_000, 16 * GiB, 4, "4bit"),     # an 8B base in fp32 would not fit in 16 GB
    ("cpu", "image", 860_000_000, 1 * GiB, 4, "8bit"),       # an SD UNet on a small CPU: torchao int8
])
def test_auto_decides_from_size_and_free_memory(device, kind, params, free, compute, picked, monkeypatch):
    monkeypatch.setattr(q, "missing", lambda mode, kind, device: None)  # as if the stack ran on this device
    choice = q.choose_quantize("auto", kind=kind, device=device, params=params, free_bytes=free,
                               compute_bytes=compute)
    assert choice.mode == picked
    assert choice.reason.startswith("auto: ") and f"{params / 1e9:.2f}B parameters" in choice.reason
    assert (choice.stack is None) == (picked == "none")


def test_auto_goes_on_unquantised_where_the_stack_is_missing_and_says_so(monkeypatch):
    monkeypatch.setattr(q, "missing", lambda mode, kind, device: "it needs the bitsandbytes package")
    choice = q.choose_quantize("auto", kind="text", device="cuda", params=8_000_000_000, free_bytes=8 * GiB,
                               compute_bytes=2)
    assert choice.mode == "none" and "cannot run here (it needs the bitsandbytes package)" in choice.reason


def test_count_params_reads_the_safetensors_headers(tiny_llama):
    from trainer.models import load_causal_lm

    model, _ = load_causal_lm(tiny_llama)
    saved = {id(p): p.numel() for p in model.parameters()}  # tied embeddings are saved once
    assert q.count_params(tiny_llama) == sum(saved.values())


# --------------------------------------------------------------------------------------------
# refusals, before any work


def test_4bit_image_on_a_cpu_is_refused_before_the_data_is_read(tiny_sd, tmp_path):
    config = ImageTrainConfig(data=[str(tmp_path / "no-such-folder")], out=str(tmp_path / "run"), base=str(tiny_sd),
                              quantize="4bit", precision="fp32", steps=2)
    with pytest.raises(ConfigError, match="quantize 4bit cannot run here: 4-bit image bases need a CUDA GPU.*mslk"):
        train_image(config)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_missing_bitsandbytes_is_named(tiny_llama, tmp_path, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):
        if name == "bitsandbytes":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    config = text_config(tmp_path / "no-such-file.txt", tmp_path / "run", tiny_llama, quantize="8bit")
    with pytest.raises(ConfigError, match=r"quantize 8bit cannot run here: it needs the bitsandbytes package, "
                                          r"which is not installed \(pip install 'bitsandbytes>=0.50'\)"):
        train_text(config)
    with pytest.raises(ConfigError, match="which is not installed"):
        q.check_quantize("4bit", "text", "cpu")
    q.check_quantize("auto", "text", "cpu")  # auto is never refused: it goes on unquantised


def test_a_bad_quantize_value_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="quantize"):
        TextTrainConfig.build(out="x", data=["y"], quantize="2bit")


# --------------------------------------------------------------------------------------------
# image


@pytest.fixture(scope="module")
def sd_8bit_run(tmp_path_factory, tiny_sd, image_folder):
    out = tmp_path_factory.mktemp("quantize-image") / "sd"
    return train_image(ImageTrainConfig(
        data=[str(image_folder)], out=str(out), base=str(tiny_sd), resolution=RESOLUTION, steps=8, rank=4, lr=2e-3,
        batch_size=4, eval_every=4, sample_every=0, sample_steps=2, sample_seeds=[0],
        sample_prompts=["a photo of sks"], min_image_side=16, augment=0.0, precision="fp32", quantize="8bit"))


def test_an_8bit_image_run_trains_its_unet_in_torchao_int8(sd_8bit_run):
    metrics = json.loads((sd_8bit_run.run_dir / "metrics.json").read_text())
    assert metrics["quantize"] == "8bit"
    assert metrics["quantize_choice"]["stack"] == "torchao int8 weight-only (diffusers)"
    assert set(sd_8bit_run.adapter_files) == {"diffusers", "kohya"}  # exports unchanged
    assert sorted(p.name for p in (sd_8bit_run.run_dir / "adapter").iterdir()) == sorted(["README.md", DIFFUSERS_FILE,
                                                                                          KOHYA_FILE])


def test_the_8bit_image_adapter_loads_into_the_unquantised_pipeline(sd_8bit_run, tiny_sd):
    """The export check loaded each file into a fresh float32 pipeline and compared every layer's update
    with the trained one; here the same again by hand, and the pipeline it loaded into is unquantised."""
    from trainer.image.export import lora_deltas
    from trainer.image.pipelines import load_pipeline

    fresh = load_pipeline(tiny_sd)
    assert fresh.quantize == "none"
    assert all(p.is_floating_point() and not q.is_quantized(p) for p in fresh.denoiser.parameters())
    fresh.pipe.load_lora_weights(str(sd_8bit_run.run_dir / "adapter"), weight_name=DIFFUSERS_FILE, adapter_name="mine")
    deltas = lora_deltas(fresh.denoiser, "mine")
    assert deltas and max(float(d.abs().max()) for d in deltas.values()) > 0


def test_the_image_export_check_refuses_a_file_that_does_not_match_a_quantised_run(tiny_sd, tmp_path):
    """The check compares against the quantised run's own LoRA: a file scaled 1% off fails it."""
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import save_file

    from trainer.errors import TrainingError
    from trainer.image.export import save_diffusers, verify_loads
    from trainer.image.pipelines import load_pipeline

    trained = load_pipeline(tiny_sd, quantize="8bit")
    assert any(q.is_quantized(p) for p in trained.denoiser.parameters())
    torch.manual_seed(0)
    trained.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(trained.part.LORA_TARGETS),
                                            init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, param in trained.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    path = save_diffusers(trained, tmp_path / "good")
    verify_loads(load_pipeline(tiny_sd), trained, {"diffusers": path})
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    (tmp_path / "off").mkdir()
    save_file({k: v * 1.01 if "lora.up" in k else v for k, v in tensors.items()}, str(tmp_path / "off" / DIFFUSERS_FILE),
              metadata=metadata)
    with pytest.raises(TrainingError, match="differently"):
        verify_loads(load_pipeline(tiny_sd), trained, {"diffusers": tmp_path / "off" / DIFFUSERS_FILE})


# --------------------------------------------------------------------------------------------
# the bot: a server manager's default reaches the trainer; a session's and a run's choice win over it


@pytest.fixture
def bot_config(tiny_llama):
    from bot.config import BotSettings

    return BotSettings(_env_file=None, allowed_models=[str(tiny_llama)], progress_edit_s=0, train_cooldown_s=0,
                       train_threads=1, max_pending_jobs_per_user=5,
                       text_train_defaults={"precision": "fp32", "patience": 0, "seq_len": 64, "batch_size": 2,
                                            "max_new_tokens": 4, "augment": 0.0, "prompts": ["To be"]})


def last_spec(world):
    from trainer.spec import RunSpec

    job = max(world.env.bot.services.db.list_jobs(), key=lambda j: j.id)
    return job, RunSpec.from_job(job.kind, job.config)


@pytest.mark.asyncio
async def test_a_server_quantize_default_reaches_the_trainer(world, tiny_llama, tmp_path):
    from storage import jobkinds
    from storage.jobrun import run_job
    from tests.bot_world import text_bytes
    from trainer.rundir import RunDir

    refused = await world.alice.slash(world.channel, "server settings", quantize="8bit")
    assert refused.response.ephemeral and "Only server managers" in refused.response.content
    done = await world.mod.slash(world.channel, "server settings", quantize="8bit")
    assert "quantize 8bit" in str(done.response.embeds[0].to_dict())

    await world.alice.slash(world.channel, "session new", kind="text", title="Small box", base_model=str(tiny_llama))
    thread = world.channel.threads[-1]
    await world.alice.slash(thread, "data add", file=("fox.txt", text_bytes(12)))
    card = (await world.alice.slash(thread, "data report")).response.embeds[0].description
    assert "**Base quantisation:** 8bit (the frozen base loads 8bit; LoRA and optimizer stay float32)" in card

    started = await world.alice.slash(thread, "train start", steps=2)
    assert not started.ephemeral, started.response.content
    job, spec = last_spec(world)
    assert spec.settings["quantize"] == "8bit"
    run = RunDir(tmp_path / f"job-{job.id}")  # run as the worker runs it
    config = jobkinds.get(job.kind).prepare_inputs(world.env.bot.services.blobs, run, job.config)
    assert run_job(job.kind, config, run, resume=False)["status"] == "done"
    metrics = json.loads(run.metrics.read_text())
    assert metrics["quantize"] == "8bit" and metrics["quantize_choice"]["reason"] == "8bit was asked for"

    # the session's owner overrides the server for this session; a run's own option wins over both
    refused = await world.bob.slash(thread, "session settings", quantize="none")
    assert refused.response.ephemeral
    updated = await world.alice.slash(thread, "session settings", quantize="none")
    assert "quantize none" in updated.response.content
    await world.env.advance_time(60)
    started = await world.alice.slash(thread, "train start", steps=2)
    assert not started.ephemeral, started.response.content
    assert last_spec(world)[1].settings["quantize"] == "none"
    await world.env.advance_time(60)
    await world.alice.slash(thread, "train start", steps=2, quantize="4bit")
    assert last_spec(world)[1].settings["quantize"] == "4bit"


def test_the_report_line_says_what_the_last_run_picked_and_why():
    from bot.report import quantize_line

    line = quantize_line({}, {"quantize": "4bit", "quantize_reason": "auto: the base would not leave room"})
    assert line.startswith("**Base quantisation:** auto: the base loads unquantised where it leaves room")
    assert line.endswith("Last run: 4bit, auto: the base would not leave room.")


def test_cli_quantize_reaches_the_trainer(tiny_llama, text_file, tmp_path):
    from typer.testing import CliRunner

    from loracord.cli import app

    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "text", str(text_file), "--out", str(run), "--base", str(tiny_llama),
                                      "--steps", "2", "--patience", "0", "--seq-len", "64", "--batch-size", "2",
                                      "--max-new-tokens", "4", "--prompt", "To be", "--precision", "fp32",
                                      "--threads", "1", "--quantize", "8bit"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["quantize"] == "8bit"
    refused = CliRunner().invoke(app, ["train", "text", str(text_file), "--out", str(tmp_path / "bad"),
                                       "--base", str(tiny_llama), "--quantize", "2bit"])
    # the CLI's main() prints a ConfigError as one line; under CliRunner it is the exception
    assert refused.exit_code != 0 and "quantize: Input should be 'auto', 'none', '8bit' or '4bit'" in str(
        refused.exception)
