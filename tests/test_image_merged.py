"""``loracord export RUN --merged``: an image run's base with its LoRA fused in, as one single-file checkpoint.

A tiny SD 1.x run is trained on a locally built base (its card says creativeml-openrail-m), merged
at weights 1 and 0.5, and the file is read back by diffusers' own single-file reader
(``StableDiffusionPipeline.from_single_file`` with the base folder as its config): its UNet holds
the base's weights plus the trained update times the weight, to float32 rounding, and its VAE and
text encoder are the base's. A tiny SDXL base whose two text encoders differ in width (as the real
ones do, which is how the reader tells them apart) goes through the SDXL layout the same way.
Refusals are checked before anything loads: a licence that forbids redistribution, a base with
no licence, a file over the quota, a text run, a family without a single-checkpoint layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from tests.image_fixtures import RESOLUTION, _text_config, _vae, build_sd, tiny_tokenizer
from tests.image_fixtures import image_folder  # noqa: F401 - fixture
from trainer.errors import UserError
from trainer.image.config import ImageTrainConfig
from trainer.image.export import DIFFUSERS_FILE, lora_deltas, quiet_check
from trainer.image.merged import estimated_bytes, export_merged_checkpoint
from trainer.image.train import train_image

CARD = "---\nlicense: {licence}\n---\n# a tiny base\n"


def with_card(folder: Path, licence: str) -> Path:
    (folder / "README.md").write_text(CARD.format(licence=licence))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return with_card(build_sd(tmp_path_factory.mktemp("merge-base") / "pipe"), "creativeml-openrail-m")


@pytest.fixture(scope="module")
def run(base, image_folder, tmp_path_factory) -> Path:
    config = ImageTrainConfig(data=[str(image_folder)], out=str(tmp_path_factory.mktemp("merge-runs") / "sks"),
                              base=str(base), resolution=RESOLUTION, steps=4, rank=4, lr=1e-2, batch_size=4,
                              eval_every=2, sample_every=0, sample_steps=2, sample_seeds=[0], min_image_side=16,
                              precision="fp32")
    return train_image(config).run_dir


def read_back(path: Path, base: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(str(path), config=str(base), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)


def with_lora(base: Path, run: Path, weight: float):
    """The base pipeline with the run's adapter loaded (not fused) at ``weight``."""
    pipe = read_back_base(base)
    with quiet_check():
        pipe.load_lora_weights(str(run / "adapter"), weight_name=DIFFUSERS_FILE, adapter_name="trained")
    pipe.set_adapters(["trained"], [weight])
    return pipe


def render(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of sks pattern 1", num_inference_steps=2, guidance_scale=1.0, height=RESOLUTION,
                width=RESOLUTION, generator=torch.Generator().manual_seed(0), output_type="np").images[0]


def copy_run(run: Path, tmp_path: Path, **metrics) -> Path:
    copy = shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns("export"))
    data = json.loads((copy / "metrics.json").read_text()) | metrics
    (copy / "metrics.json").write_text(json.dumps(data))
    return copy


# ---------------------------------------------------------------- the file and what it holds


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_the_file_holds_the_base_with_the_lora_fused_at_the_weight(run, base, tmp_path, weight):
    merged = export_merged_checkpoint(run, tmp_path / "out", weight=weight, fp32=True)
    assert merged.files == (merged.path,) and [p.name for p in (tmp_path / "out").iterdir()] == [merged.path.name]
    assert merged.path.suffix == ".safetensors" and merged.weight == weight and merged.note == ""
    with safe_open(str(merged.path), "pt") as f:
        meta = f.metadata()
    assert meta["loracord.weight"] == f"{weight:g}" and meta["loracord.licence"] == "creativeml-openrail-m"
    assert meta["loracord.base"] == str(base) and meta["loracord.run"] == run.name

    loaded, plain = read_back(merged.path, base), read_back_base(base)
    got, was = loaded.unet.state_dict(), plain.unet.state_dict()
    adapted = with_lora(base, run, 1.0)
    update = lora_deltas(adapted.unet, "trained")  # B @ A x scale, as trained
    adapted.set_adapters(["trained"], [weight])
    assert update and all(delta.abs().max() > 0 for delta in update.values())
    for name, delta in update.items():
        torch.testing.assert_close(got[name + ".weight"], was[name + ".weight"] + weight * delta, atol=1e-6, rtol=1e-5)
        assert not torch.equal(got[name + ".weight"], was[name + ".weight"])
    untouched = set(got) - {name + ".weight" for name in update}
    assert all(torch.equal(got[k], was[k]) for k in untouched)
    for component in ("vae", "text_encoder"):
        mine, theirs = getattr(loaded, component).state_dict(), getattr(plain, component).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    image = render(loaded)
    np.testing.assert_allclose(image, render(adapted), atol=1e-4)  # the checkpoint draws what base + LoRA draws
    assert np.abs(image - render(plain)).max() > 1e-3


def read_back_base(base: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(base, use_safetensors=True, safety_checker=None,
                                                   requires_safety_checker=False)


def test_fp16_by_default_its_size_as_estimated_and_a_stopped_run_says_which_step(run, base, tmp_path):
    stopped = copy_run(run, tmp_path, stop_reason="cancelled", best_step=2)
    merged = export_merged_checkpoint(stopped, tmp_path / "out")
    assert merged.note == "The run stopped (cancelled): this is the adapter of step 2."
    assert merged.dtype == "fp16" and merged.path.name == f"{run.name}-merged-w1-fp16.safetensors"
    with safe_open(str(merged.path), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        assert f.metadata()["loracord.note"] == merged.note
    estimate = estimated_bytes(base, 2)
    assert estimate <= merged.bytes <= estimate * 1.05  # the header is the difference
    assert not list((tmp_path / "out").glob("*.part"))


def test_cli_writes_the_merged_file_into_the_run(run):
    from loracord.cli import app

    result = CliRunner().invoke(app, ["export", str(run), "--merged", "--weight", "0.8"])
    assert result.exit_code == 0, result.output
    written = run / "export" / f"{run.name}-merged-w0.8-fp16.safetensors"
    assert written.is_file() and "LoRA weight 0.8, fp16" in result.output
    assert "licence creativeml-openrail-m" in result.output
    shutil.rmtree(run / "export")


# ---------------------------------------------------------------- refusals, before anything loads


def licensed_copy(run: Path, base: Path, tmp_path: Path, card: str | None) -> Path:
    """A copy of the run whose base folder (configs only: nothing may load) has the card ``card``."""
    other = shutil.copytree(base, tmp_path / "other-base", ignore=shutil.ignore_patterns("*.safetensors", "README.md"))
    if card is not None:
        (other / "README.md").write_text(card)
    return copy_run(run, tmp_path, base=str(other), base_path=str(other))


def test_a_base_whose_licence_forbids_redistribution_is_refused_naming_it(run, base, tmp_path):
    card = "---\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\n---\n"
    with pytest.raises(UserError, match="licence, flux-1-dev-non-commercial-license, is not one") as caught:
        export_merged_checkpoint(licensed_copy(run, base, tmp_path, card), tmp_path / "out")
    assert "export the adapter itself" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_base_without_a_licence_is_refused(run, base, tmp_path):
    with pytest.raises(UserError, match="could not find the base's licence"):
        export_merged_checkpoint(licensed_copy(run, base, tmp_path, None), tmp_path / "out")


def test_a_file_over_the_quota_is_refused_naming_both_sizes(run, base, tmp_path):
    with pytest.raises(UserError, match=r"about \d+ MiB \(fp32\), more than the 0 MiB this server allows"):
        export_merged_checkpoint(run, tmp_path / "out", max_bytes=1000, fp32=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weight", [0, -1, 2.5, float("nan")])
def test_a_weight_out_of_range_is_refused(run, tmp_path, weight):
    with pytest.raises(UserError, match="a number above 0 and at most 2"):
        export_merged_checkpoint(run, tmp_path / "out", weight=weight)


def test_a_family_without_a_single_checkpoint_layout_is_refused_by_name(run, tmp_path):
    with pytest.raises(UserError, match=r"of a FLUX.1 base yet; it can for SD 1.x/2.x and SDXL bases"):
        export_merged_checkpoint(copy_run(run, tmp_path, family="flux"), tmp_path / "out")


def test_a_text_run_is_pointed_at_the_gguf_export(run, tmp_path):
    with pytest.raises(UserError, match="--gguf --merged"):
        export_merged_checkpoint(copy_run(run, tmp_path, kind="text"), tmp_path / "out")


def test_a_base_not_on_this_machine_is_refused_without_loading(run, tmp_path):
    away = copy_run(run, tmp_path, base="someone/gone", base_path=str(tmp_path / "gone"))
    with pytest.raises(UserError, match="'someone/gone' is not on this machine"):
        export_merged_checkpoint(away, tmp_path / "out", may_load=False)


# ---------------------------------------------------------------- SDXL's layout


def build_sdxl_wide(folder: Path) -> Path:
    """A tiny SDXL pipeline whose second text encoder is wider than the first (48 vs 32), as in the real
    model: diffusers' single-file reader tells the two apart by their widths."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=RESOLUTION // 2,
                                in_channels=4, out_channels=4, cross_attention_dim=32 + 48, attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=6 * 8 + 24, norm_num_groups=16,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    wide = _text_config(hidden_size=48, intermediate_size=64, projection_dim=24)
    pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config()),
                                     text_encoder_2=CLIPTextModelWithProjection(wide), tokenizer=tiny_tokenizer(),
                                     tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def test_sdxl_is_written_in_its_original_layout(tmp_path):
    """Every weight of an SDXL pipeline comes back from the single file where diffusers' reader puts it."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from trainer.image.families import sdxl

    folder = build_sdxl_wide(tmp_path / "xl")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, use_safetensors=True)
    state = sdxl.single_checkpoint(pipe)
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in state
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "xl.safetensors"))
    back = StableDiffusionXLPipeline.from_single_file(str(tmp_path / "xl.safetensors"), config=str(folder),
                                                      local_files_only=True)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(back, component).state_dict(), getattr(pipe, component).state_dict()
        assert mine.keys() == theirs.keys(), component
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), component


# ---------------------------------------------------------------- the real models' structures


def real_structure(family: str) -> SimpleNamespace:
    """SD 1.5's or SDXL's components at their real sizes on the meta device (shapes only, no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def clip(width, layers, cls=CLIPTextModel):
        return cls(CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_attention_heads=width // 64,
                                  num_hidden_layers=layers, projection_dim=width))

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        if family == "sd":
            return SimpleNamespace(unet=UNet2DConditionModel(cross_attention_dim=768, sample_size=64), vae=vae,
                                   text_encoder=clip(768, 12))
        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            cross_attention_dim=2048, sample_size=128)
        return SimpleNamespace(unet=unet, vae=vae, text_encoder=clip(768, 12),
                               text_encoder_2=clip(1280, 32, CLIPTextModelWithProjection))


# keys per part of the released files (v1-5-pruned-emaonly, sd_xl_base_1.0), less the position_ids
# and logit_scale buffers, which no reader uses
REAL_COUNTS = {"sd": {"model.diffusion_model.": 686, "first_stage_model.": 248, "cond_stage_model.transformer.": 196},
               "sdxl": {"model.diffusion_model.": 1680, "first_stage_model.": 248,
                        "conditioner.embedders.0.transformer.": 196, "conditioner.embedders.1.model.": 389}}

# Keys of the released files, with their shapes where they show a layout decision (diffusers' readers
# accept an upsampler at either place, and the VAE's attention either way; the original code does not)
KNOWN_KEYS = {
    "sd": {"model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
           "model.diffusion_model.input_blocks.9.0.op.weight": None,
           "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
           "model.diffusion_model.output_blocks.5.2.conv.weight": None,
           "model.diffusion_model.output_blocks.8.2.conv.weight": None,
           "model.diffusion_model.output_blocks.11.1.proj_out.weight": None,
           "model.diffusion_model.output_blocks.11.0.skip_connection.weight": None,
           "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
           "model.diffusion_model.time_embed.2.weight": None, "model.diffusion_model.out.2.weight": None,
           "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
           "first_stage_model.decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
           "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
           "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
           "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
           "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
           "first_stage_model.encoder.norm_out.weight": None,
           "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight": (768, 768)},
    "sdxl": {"model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
             "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
             "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight": (640, 640),
             "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
             "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
             "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
             "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight": (5120, 1280),
             "conditioner.embedders.1.model.text_projection": (1280, 1280),
             "conditioner.embedders.1.model.positional_embedding": (77, 1280),
             "conditioner.embedders.1.model.ln_final.bias": (1280,)},
}


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_the_real_models_structures_give_the_released_files_keys(family):
    """Every weight of SD 1.5 and SDXL (as built by diffusers at full size, shapes only) is placed, as many
    keys per part as the released single files hold, and diffusers' own readers of those files give back
    every weight at its shape."""
    from diffusers.loaders import single_file_utils as readers

    from trainer.image import families

    parts = real_structure(family)
    state = families.named(family).single_checkpoint(parts)
    assert {p: sum(k.startswith(p) for k in state) for p in REAL_COUNTS[family]} == REAL_COUNTS[family]
    assert len(state) == sum(REAL_COUNTS[family].values())
    for key, shape in KNOWN_KEYS[family].items():
        assert key in state and (shape is None or tuple(state[key].shape) == shape), key
    if family == "sdxl":
        assert readers.infer_diffusers_model_type(state) == "xl_base"
    back = {"unet": readers.convert_ldm_unet_checkpoint(state, parts.unet.config),
            "vae": readers.convert_ldm_vae_checkpoint(state, parts.vae.config),
            "text_encoder": readers.convert_ldm_clip_checkpoint(state)}
    if family == "sdxl":
        back["text_encoder_2"] = readers.convert_open_clip_checkpoint(parts.text_encoder_2, state,
                                                                      prefix="conditioner.embedders.1.model.")
    for name, weights in back.items():
        want = shapes(getattr(parts, name).state_dict(), text=name.startswith("text"))
        assert shapes(weights) == want, name


def shapes(state: dict, text: bool = False) -> dict:
    """{key: shape}; a text encoder's keys as the readers give them, under ``text_model.`` (which
    transformers leaves out of a plain CLIPTextModel's state dict)."""
    named = {("text_model." + k if text and not k.startswith(("text_model.", "text_projection")) else k): v
             for k, v in state.items()}
    return {k: tuple(v.shape) for k, v in named.items()}
