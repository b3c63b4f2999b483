"""FLUX.1 and SD 3.5 family modules on tiny offline pipelines: loading, prompts, the flow-matching
objective, LoRA training with exact resume, both export files loading back, and sampling."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.family_fixtures import (T5_TOKENS, build_tiny_flux, tiny_flux_dev, tiny_flux_schnell,  # noqa: F401
                                   tiny_sd3)
from tests.image_fixtures import MAX_TOKENS, pattern_image
from trainer.errors import TrainingError
from trainer.image.export import DIFFUSERS_FILE
from trainer.image import families
from trainer.image.families import flow, flux, sd3
from trainer.image.families.adapters import save_diffusers, verify_loads

CAPTIONS = ["sks cat 0", "sks cat 1", "sks cat 2"]
SIZE = 64  # training and sampling side: 8x8 latents, 16 image tokens
FAMILIES = {"flux-schnell": (flux, "tiny_flux_schnell"), "flux-dev": (flux, "tiny_flux_dev"),
            "sd3": (sd3, "tiny_sd3")}


@pytest.fixture(params=list(FAMILIES))
def family(request):
    """(family module, tiny pipeline folder) for each of schnell-like, dev-like and SD 3.5-like."""
    module, fixture = FAMILIES[request.param]
    return module, request.getfixturevalue(fixture)


@pytest.fixture(scope="module")
def tiny_flux_double(tmp_path_factory):
    """A tiny FLUX.1 without single-stream blocks: diffusers' kohya reader assumes FLUX.1's widths for those."""
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux-double") / "pipe", single_layers=0)


def pixels(count: int) -> torch.Tensor:
    array = np.stack([np.asarray(pattern_image(i, (SIZE, SIZE))) for i in range(count)]).astype(np.float32)
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1


def load(path, dtype=None):
    """The family's pipeline from a tiny folder, as the trainer loads a base (from_pretrained, safetensors)."""
    from trainer.image.pipelines import load_pipeline

    return load_pipeline(path, dtype=dtype).pipe


def rows(module, pipe, captions: list[str]) -> dict:
    """``{caption: Conditioning}`` one row each, as the training loop caches them."""
    cond = module.encode_prompts(pipe, captions)
    return {c: flow.Conditioning(cond.prompt[i], cond.pooled[i]) for i, c in enumerate(captions)}


def prepared(module, path, *, rank=4, alpha=4.0, drop_t5=True):
    """The family's pipeline with cached captions and latents, T5 freed, and a fresh seeded LoRA."""
    from peft import LoraConfig

    pipe = load(path)
    cache = rows(module, pipe, CAPTIONS + [""])
    if drop_t5:
        module.free_after_caching(pipe)
    with torch.no_grad():
        dist = pipe.vae.encode(pixels(len(CAPTIONS))).latent_dist
    torch.manual_seed(0)
    pipe.transformer.requires_grad_(False)
    pipe.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                            target_modules=list(module.LORA_TARGETS)))
    return SimpleNamespace(pipe=pipe, cache=cache, mean=dist.mean, std=dist.std,
                           objective=module.training_scheduler(pipe))


def optimizer_for(s):
    return torch.optim.AdamW([p for p in s.pipe.transformer.parameters() if p.requires_grad], lr=5e-3)


def loss_of(module, s, latents, noise, timesteps, captions, *, weighted: bool):
    """The family's ``noise_loss`` of raw latents, as the training loop asks it."""
    cond = flow.stack([s.cache[c] for c in captions])
    batch = {"latents": latents, "noise": noise, "timesteps": timesteps}
    return module.noise_loss(s.objective, s.pipe.transformer, batch, cond.prompt,
                             module.denoiser_kwargs(cond.pooled, batch), vae_config=s.pipe.vae.config,
                             prediction_type=module.PREDICTION_TYPE, min_snr_gamma=5.0, weighted=weighted)


def train_step(module, s, optimizer, generator, batch: int = 2) -> float:
    """One step as the trainer runs it: the batch, noise and sigmas all from ``generator``.

    Latents are the distributions' means: a random VAE's posterior std is about 1, which would
    drown the images (a trained VAE's is tiny; the trainer draws from the distribution).
    """
    idx = torch.randint(len(s.mean), (batch,), generator=generator)
    noise = torch.randn((batch, *s.mean.shape[1:]), generator=generator)
    sigmas = module.draw_timesteps(s.objective, batch, generator)
    loss = loss_of(module, s, s.mean[idx], noise, sigmas, [CAPTIONS[i] for i in idx.tolist()], weighted=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in s.pipe.transformer.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def val_loss(module, s, points: int = 4) -> float:
    """Unweighted loss at the family's fixed validation sigmas with fixed noise, in eval mode."""
    noise = torch.randn((points, *s.mean.shape), generator=torch.Generator().manual_seed(0))
    sigmas = module.val_timesteps(s.objective, points)
    s.pipe.transformer.eval()
    with torch.no_grad():
        total = sum(loss_of(module, s, s.mean, noise[k], sigmas[k].repeat(len(s.mean)), CAPTIONS,
                            weighted=False).item() for k in range(points))
    s.pipe.transformer.train()
    return total / points


def lora_state(s) -> dict:
    from peft.utils import get_peft_model_state_dict

    return {k: v.clone() for k, v in get_peft_model_state_dict(s.pipe.transformer).items()}


# --------------------------------------------------------------------------------------------
# the tiny pipelines and what a folder says without torch


def test_tiny_pipelines_load_like_hub_ones(family):
    module, path = family
    index = json.loads((path / "model_index.json").read_text())
    assert families.find(index["_class_name"]) is module  # the registry tells the two apart by class
    pipe = load(path)
    from transformers import T5TokenizerFast

    t5_tokenizer = pipe.tokenizer_2 if module is flux else pipe.tokenizer_3
    assert isinstance(t5_tokenizer, T5TokenizerFast)
    assert pipe.vae.config.latent_channels == module.LATENT_CHANNELS == 16
    assert pipe.vae.config.shift_factor and pipe.vae_scale_factor == 8
    assert module.native_size(path) == (1024 if module is flux else 256)  # Flux: 128 x 8; tiny SD3: 32 x 8


def test_sampling_defaults_per_variant(tiny_flux_schnell, tiny_flux_dev, tiny_sd3):
    assert flux.sampling_defaults(tiny_flux_schnell) == {"steps": 4, "guidance_scale": 0.0, "max_sequence_length": 256}
    assert flux.sampling_defaults(tiny_flux_dev)["guidance_scale"] == 3.5
    assert flux.guidance_distilled(tiny_flux_dev) and not flux.guidance_distilled(tiny_flux_schnell)
    assert sd3.sampling_defaults(tiny_sd3)["steps"] == 28


# --------------------------------------------------------------------------------------------
# prompts


def test_prompt_encoding_is_the_pipelines(family):
    """Cached embeddings have the family's layout and sample exactly the image the prompt itself gives."""
    module, path = family
    pipe = load(path)
    cache = rows(module, pipe, CAPTIONS + [""])
    cond = cache[CAPTIONS[0]]
    if module is flux:  # T5 sequence; CLIP pooled
        assert cond.prompt.shape == (T5_TOKENS, 32) and cond.pooled.shape == (32,)
    else:  # both CLIPs' tokens, then T5's, at T5's width; both CLIPs' projections
        assert cond.prompt.shape == (MAX_TOKENS + T5_TOKENS, 32) and cond.pooled.shape == (32,)
    batch = module.encode_prompts(pipe, CAPTIONS)
    assert torch.equal(batch.prompt[1], cache[CAPTIONS[1]].prompt)
    guidance = module.sampling_defaults(path)["guidance_scale"]
    direct = module.sample(pipe, CAPTIONS[0], seed=0, steps=2, guidance_scale=guidance, size=SIZE)
    cached = module.sample(pipe, CAPTIONS[0], seed=0, steps=2, guidance_scale=guidance, size=SIZE, cache=cache)
    assert np.array_equal(np.asarray(direct), np.asarray(cached))


def test_t5_can_go_after_caching(family):
    module, path = family
    s = prepared(module, path)
    assert (s.pipe.text_encoder_2 if module is flux else s.pipe.text_encoder_3) is None
    with pytest.raises(ValueError, match="dropped"):
        module.encode_prompts(s.pipe, ["sks"])
    losses = [train_step(module, s, optimizer_for(s), torch.Generator().manual_seed(0)) for _ in range(2)]
    assert all(np.isfinite(losses))
    guidance = module.sampling_defaults(path)["guidance_scale"]
    with pytest.raises(ValueError, match="No cached embeddings"):
        module.sample(s.pipe, "never cached", seed=0, steps=2, guidance_scale=guidance, size=SIZE, cache=s.cache)
    with pytest.raises(ValueError, match="dropped"):  # SD3's pipeline would put zeros where T5 goes
        module.sample(s.pipe, CAPTIONS[0], seed=0, steps=2, guidance_scale=guidance, size=SIZE)


# --------------------------------------------------------------------------------------------
# the objective


def test_objective_follows_the_scheduler(tiny_flux_schnell, tiny_flux_dev, tiny_sd3):
    schnell, dev, sd = load(tiny_flux_schnell), load(tiny_flux_dev), load(tiny_sd3)
    half = torch.tensor([0.5])
    assert flow.sigmas_at(flux.objective(schnell), half).item() == pytest.approx(0.5, abs=1e-3)  # shift 1
    assert flow.sigmas_at(flux.objective(dev), half).item() == pytest.approx(0.5, abs=1e-3)  # shifts at inference only
    assert flow.sigmas_at(sd3.objective(sd), half).item() == pytest.approx(0.75, abs=1e-3)  # 3s / (1 + 2s)
    assert flux.objective(dev).guidance == 3.5 and flux.objective(schnell).guidance is None
    assert flux.objective(schnell).timestep_sampling == "none" and sd3.objective(sd).timestep_sampling == "logit_normal"
    with pytest.raises(ValueError, match="loss_weighting 'min_snr'"):
        sd3.objective(sd, loss_weighting="min_snr")


def test_flow_matching_target_is_the_velocity():
    """A predictor that returns noise - latents has zero loss at every sigma and weighting."""
    latents = torch.randn(3, 16, 8, 8)
    noise, sigmas = torch.randn(3, 16, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    objective = flow.FlowObjective(torch.linspace(1, 0.001, 1000), 1000, loss_weighting="sigma_sqrt")

    def oracle(noisy, s):
        s = s.view(-1, 1, 1, 1)
        assert torch.allclose(noisy, (1 - s) * latents + s * noise)
        return noise - latents

    assert flow.per_image_loss(oracle, objective, latents, noise, sigmas, weighted=True).abs().max() < 1e-10


# --------------------------------------------------------------------------------------------
# training and exact resume


def test_lora_learns_and_resumes_exactly(family):
    module, path = family
    s = prepared(module, path)
    optimizer, generator = optimizer_for(s), torch.Generator().manual_seed(0)
    before = val_loss(module, s)
    losses, saved = [], None
    for step in range(24):
        if step == 12:
            saved = (lora_state(s), copy.deepcopy(optimizer.state_dict()), generator.get_state())
        losses.append(train_step(module, s, optimizer, generator))
    after = val_loss(module, s)
    assert after < before
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert val_loss(module, s) == after  # deterministic

    # Resume at step 12 in a fresh process-like state: new pipeline, adapter, optimizer, generator.
    from peft import set_peft_model_state_dict

    r = prepared(module, path)
    set_peft_model_state_dict(r.pipe.transformer, saved[0])
    optimizer = optimizer_for(r)
    optimizer.load_state_dict(saved[1])
    generator = torch.Generator()
    generator.set_state(saved[2])
    resumed = [train_step(module, r, optimizer, generator) for _ in range(12)]
    assert resumed == losses[12:]
    assert val_loss(module, r) == after


# --------------------------------------------------------------------------------------------
# exports


def trained_briefly(module, path, steps: int = 6):
    """A LoRA with rank 4 and alpha 8 (scale 2, so a dropped alpha would show) after a few steps."""
    s = prepared(module, path, alpha=8.0)
    optimizer, generator = optimizer_for(s), torch.Generator().manual_seed(0)
    for _ in range(steps):
        train_step(module, s, optimizer, generator)
    return s


@pytest.mark.parametrize("module", [flux, sd3], ids=["flux", "sd3"])
def test_both_files_load_back_with_the_trained_updates(module, tiny_flux_double, tiny_sd3, tmp_path):
    path = tiny_flux_double if module is flux else tiny_sd3
    s = trained_briefly(module, path)
    files = module.export(s.pipe, load(path), tmp_path)  # raises TrainingError on any mismatch
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([DIFFUSERS_FILE, module.SINGLE_FILE])
    with safe_open(str(files[next(k for k in files if k != "diffusers")]), "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    if module is flux:
        assert all(k.startswith("lora_unet_double_blocks_0_") for k in keys)
        assert "lora_unet_double_blocks_0_img_attn_qkv.alpha" in keys and metadata["ss_network_alpha"] == "8.0"
    else:
        assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
        assert not metadata  # alpha is folded into lora_B; nothing for a reader to miss


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_verify_catches_a_wrong_scale(dtype, tiny_flux_double, tmp_path):
    """Also in a fresh pipeline loaded in bf16, as a run in bf16 checks its files (the LoRA rounded on load)."""
    from safetensors.torch import load_file, save_file

    s = trained_briefly(flux, tiny_flux_double)
    path = flux.save_single_file(s.pipe, tmp_path)
    verify_loads(load(tiny_flux_double, dtype), s.pipe, {"kohya": path})  # as written: loads alike
    state = load_file(str(path))
    state["lora_unet_double_blocks_0_img_attn_proj.alpha"] *= 1.1
    save_file(state, str(path))
    with pytest.raises(TrainingError, match=r"transformer_blocks\.0\.attn\.to_out\.0 differently"):
        verify_loads(load(tiny_flux_double, dtype), s.pipe, {"kohya": path})


@pytest.mark.parametrize("fixture", ["tiny_flux_schnell", "tiny_flux_dev"])
def test_flux_single_blocks_export_diffusers_only_below_flux1_widths(fixture, request, tmp_path):
    """The diffusers file round-trips with single blocks; the kohya file is refused, not written unreadable."""
    path = request.getfixturevalue(fixture)
    s = trained_briefly(flux, path, steps=2)
    assert any(n.startswith("single_transformer_blocks.") for n in flux.lora_factors(s.pipe.transformer))
    verify_loads(load(path), s.pipe, {"diffusers": save_diffusers(s.pipe, tmp_path)})
    assert "3072" in flux.single_file_problem(s.pipe.transformer)
    with pytest.raises(ValueError, match="widths"):
        flux.save_single_file(s.pipe, tmp_path)


def test_kohya_layout_reads_back_at_flux1_widths():
    """At FLUX.1's real widths diffusers splits the fused blocks back into the same updates; the
    fused update (what ComfyUI adds: up @ down * alpha / rank) is the trained ones stacked."""
    from diffusers import FluxPipeline

    torch.manual_seed(0)
    inner, mlp, r = 3072, 12288, 2
    factors = {f"{block}.{m}": (torch.randn(r, inner), torch.randn(inner, r), 0.5)
               for block in ("transformer_blocks.0", "single_transformer_blocks.0")
               for m in ("attn.to_q", "attn.to_k", "attn.to_v")}
    factors["transformer_blocks.0.ff.net.2"] = (torch.randn(r, mlp), torch.randn(inner, r), 0.5)
    state = flux.kohya_state_dict(factors, {"single_transformer_blocks.0.proj_mlp": mlp}, (1, 1))
    back = FluxPipeline.lora_state_dict(dict(state))
    for name, (a, b, scale) in factors.items():
        got = back[f"transformer.{name}.lora_B.weight"] @ back[f"transformer.{name}.lora_A.weight"]
        assert torch.allclose(got, scale * b @ a, atol=1e-4), name
    mlp_update = back["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"]
    assert not mlp_update.any()

    small = {name: (a[:, :8], b[:8], s) for name, (a, b, s) in factors.items() if name.startswith("single")}
    fused = flux.kohya_state_dict(small, {"single_transformer_blocks.0.proj_mlp": 32}, (0, 1))
    key = "lora_unet_single_blocks_0_linear1"
    down, up, alpha = fused[f"{key}.lora_down.weight"], fused[f"{key}.lora_up.weight"], fused[f"{key}.alpha"]
    expected = torch.cat([s * b @ a for a, b, s in small.values()] + [torch.zeros(32, 8)])
    assert torch.allclose(up @ down * alpha / down.shape[0], expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# sampling with the adapter


def test_sample_with_the_exported_adapter(family, tmp_path):
    module, path = family
    s = trained_briefly(module, path)
    save_diffusers(s.pipe, tmp_path)
    pipe = load(path)
    defaults = module.sampling_defaults(path)
    kwargs = dict(seed=0, steps=2, guidance_scale=defaults["guidance_scale"], size=SIZE)
    base = np.asarray(module.sample(pipe, CAPTIONS[0], **kwargs))
    pipe.load_lora_weights(str(tmp_path), weight_name=DIFFUSERS_FILE)
    image = module.sample(pipe, CAPTIONS[0], **kwargs)
    assert image.size == (SIZE, SIZE)
    assert not np.array_equal(np.asarray(image), base)
