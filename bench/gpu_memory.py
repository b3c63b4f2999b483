"""Estimate the GPU memory of an image run at each family's native size, from parameter counts and dtypes.

Nothing is downloaded: each real base's components are built from their published configs on
PyTorch's meta device (``accelerate.init_empty_weights``: shapes, no memory), their parameters are
counted, and the LoRA that loracord adds is counted from the same target names the family module
uses. The figures then follow how ``trainer/image/train.py`` holds the run on a GPU by default:

- caching: the VAE and every text encoder on the device (flow families: all in bf16, since their
  pipelines load in the run's precision; SD/SDXL: float32), the denoiser not yet there;
- training: the denoiser in bf16, the LoRA in float32 with its gradient and two Adam moments
  (16 bytes a parameter), the VAE and the text encoders still held, except the flow families' T5,
  freed once captions are cached.

The peak counted is the larger of the two. **Activations are not counted**: they depend on the
kernels and on ``gradient_checkpointing``, and need a GPU to measure; until then every figure is
an estimate of weights and adapter state, a floor. Run ``.venv/bin/python bench/gpu_memory.py``: one JSON
line, as every benchmark prints; ``--table`` prints the Markdown table docs/benchmarks.md shows.
``--quantize`` gives the same floor for FLUX.1 and the 7-8B text bases with the frozen base in bf16,
8bit and 4bit (``--quantize``: its Linear weights quantised, everything else as above).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/ (its queue.py would shadow the stdlib's)

GB = 1e9


def clip_l():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                      num_attention_heads=12, projection_dim=768))


def clip_g():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                      num_attention_heads=20, projection_dim=1280))


def t5_xxl():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                   feed_forward_proj="gated-gelu"))


def vae(latent_channels: int):
    from diffusers import AutoencoderKL

    flow = latent_channels == 16
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=latent_channels,
                         use_quant_conv=not flow, use_post_quant_conv=not flow)


def sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768)


def sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, use_linear_projection=True)


def flux_transformer(dev: bool):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(guidance_embeds=dev)  # its defaults are FLUX.1's


def sd35_transformer(large: bool):
    from diffusers import SD3Transformer2DModel

    if large:
        return SD3Transformer2DModel(sample_size=128, num_layers=38, attention_head_dim=64, num_attention_heads=38,
                                     joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
                                     pos_embed_max_size=192, qk_norm="rms_norm")
    return SD3Transformer2DModel(sample_size=128, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                                 joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
                                 pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))


@dataclass
class Base:
    name: str
    family: str  # the family module's NAME
    denoiser: callable
    encoders: dict  # name -> builder
    freed: tuple[str, ...]  # encoders freed once captions are cached
    latent_channels: int


BASES = [
    Base("SD 1.5", "sd", sd15_unet, {"CLIP-L": clip_l}, (), 4),
    Base("SDXL 1.0", "sdxl", sdxl_unet, {"CLIP-L": clip_l, "CLIP-G": clip_g}, (), 4),
    Base("FLUX.1 [dev]", "flux", lambda: flux_transformer(True), {"CLIP-L": clip_l, "T5-XXL": t5_xxl}, ("T5-XXL",), 16),
    Base("FLUX.1 [schnell]", "flux", lambda: flux_transformer(False), {"CLIP-L": clip_l, "T5-XXL": t5_xxl},
         ("T5-XXL",), 16),
    Base("SD 3.5 Large", "sd3", lambda: sd35_transformer(True),
         {"CLIP-L": clip_l, "CLIP-G": clip_g, "T5-XXL": t5_xxl}, ("T5-XXL",), 16),
    Base("SD 3.5 Medium", "sd3", lambda: sd35_transformer(False),
         {"CLIP-L": clip_l, "CLIP-G": clip_g, "T5-XXL": t5_xxl}, ("T5-XXL",), 16),
]


def count(build) -> int:
    from accelerate import init_empty_weights

    with init_empty_weights():
        return sum(p.numel() for p in build().parameters())


def lora_params(build, targets, rank: int) -> int:
    """Parameters of a rank-``rank`` LoRA on every Linear whose name is a target or ends with ``.target``
    (peft's rule for a list of target names)."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = build()
    return sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets))


def estimate(base: Base) -> dict:
    from trainer.image import families
    from trainer.image.presets import preset_overrides

    part = families.named(base.family)
    rank = (preset_overrides("image", "balanced", 20) | part.PRESET)["rank"]
    half = 2  # bf16, what a GPU run takes by default
    aux = 4 if part.PRECISION_PROBE else half  # SD/SDXL keep VAE and encoders in float32; flow pipelines load in bf16
    denoiser = count(base.denoiser)
    encoders = {name: count(build) for name, build in base.encoders.items()}
    vae_params = count(lambda: vae(base.latent_channels))
    lora = lora_params(base.denoiser, part.LORA_TARGETS, rank)
    caching = (vae_params + sum(encoders.values())) * aux
    kept = vae_params + sum(n for name, n in encoders.items() if name not in base.freed)
    training = denoiser * half + kept * aux + lora * 16
    return {"base": base.name, "denoiser_b": denoiser / 1e9, "encoders": encoders, "lora_m": lora / 1e6,
            "rank": rank, "caching_gb": caching / GB, "training_gb": training / GB,
            "peak_gb": max(caching, training) / GB}


def linear_params(build, skip: tuple[str, ...] = ()) -> int:
    """Parameters of the Linear weights a quantiser replaces (all but those named in ``skip``)."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = build()
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not any(name.endswith(s) for s in skip))


def quantised_gb(params: int, linear: int, mode: str) -> float:
    """Bytes of a base whose Linear weights are quantised to ``mode`` (the rest in bf16), in GB.
    8bit: one byte a weight; 4bit (nf4): half a byte plus its block scales (``trainer.quantize``)."""
    from trainer.quantize import BYTES_PER_PARAM

    return (linear * BYTES_PER_PARAM[mode] + (params - linear) * 2) / GB


def quantised_image(base: Base, row: dict) -> dict:
    """The training peak with the denoiser in 8bit and 4bit (weights and adapter state, no activations)."""
    denoiser, linear = count(base.denoiser), linear_params(base.denoiser)
    rest = row["training_gb"] - denoiser * 2 / GB  # the VAE, the kept encoders and the adapter state
    return {mode: max(row["caching_gb"], rest + quantised_gb(denoiser, linear, mode)) for mode in ("8bit", "4bit")}


def llama_like(hidden, inter, layers, heads, kv, vocab):
    def build():
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                            num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab))
    return build


# Published shapes (config.json) of the 7-8B bases members ask for; Qwen2.5's biases are left out (0.01%).
TEXT_BASES = {
    "Llama 3.1 8B": llama_like(4096, 14336, 32, 32, 8, 128256),
    "Qwen2.5 7B": llama_like(3584, 18944, 28, 28, 4, 152064),
    "Mistral 7B v0.3": llama_like(4096, 14336, 32, 32, 8, 32768),
}


def text_estimate(name: str, build, rank: int = 16) -> dict:
    """A text run's weights and adapter state: the base in bf16, 8bit or nf4 (bitsandbytes keeps the
    embeddings and lm_head in bf16), LoRA on the attention projections with gradient and Adam moments."""
    params, linear = count(build), linear_params(build, skip=("lm_head",))
    lora = lora_params(build, ["q_proj", "k_proj", "v_proj", "o_proj"], rank)
    adapter = lora * 16 / GB
    return {"base": name, "params_b": params / 1e9, "lora_m": lora / 1e6, "rank": rank,
            "bf16_gb": params * 2 / GB + adapter,
            **{f"{mode}_gb": quantised_gb(params, linear, mode) + adapter for mode in ("8bit", "4bit")}}


def main() -> None:
    import json

    rows = [estimate(b) for b in BASES]
    if "--quantize" in sys.argv:
        quantised = [{"base": r["base"], "bf16_gb": r["peak_gb"], **{f"{m}_gb": v for m, v in
                                                                   quantised_image(b, r).items()}}
                     for b, r in zip(BASES, rows) if b.family == "flux"]
        text = [text_estimate(name, build) for name, build in TEXT_BASES.items()]
        if "--table" not in sys.argv:
            print(json.dumps({"bench": "gpu_memory_quantize", "estimate": "weights and adapter state, no activations",
                              "image": quantised, "text": text}))
            return
        print("| base | bf16 | 8bit | 4bit (nf4) |")
        print("|---|---|---|---|")
        for r in text + quantised:
            print(f"| {r['base']} | {r['bf16_gb']:.1f} GB | {r['8bit_gb']:.1f} GB | {r['4bit_gb']:.1f} GB |")
        return
    if "--table" not in sys.argv:
        print(json.dumps({"bench": "gpu_memory", "estimate": "weights and adapter state, no activations",
                          "rows": rows}))
        return
    print("| base | denoiser params | text encoders (params) | LoRA params (rank) | caching | training | peak |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        enc = ", ".join(f"{k} {v / 1e9:.2f}B" for k, v in r["encoders"].items())
        print(f"| {r['base']} | {r['denoiser_b']:.2f}B | {enc} | {r['lora_m']:.1f}M (r{r['rank']}) | "
              f"{r['caching_gb']:.1f} GB | {r['training_gb']:.1f} GB | {r['peak_gb']:.1f} GB |")


if __name__ == "__main__":
    main()
