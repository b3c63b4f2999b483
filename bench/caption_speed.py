"""CPU seconds per image of the captioning models loracord could default to, built offline.

No model hub here: each candidate is built from its published architecture (the numbers of its
config.json, written below) with random weights, which costs the same compute per image as the
trained model. Each is fed what its processor makes of one 4:3 photo (its image size, its image
tokens) and generates a fixed number of tokens (``--tokens``, with no early stop), so the
figures are the cost of one caption of that length. What the captions say cannot be judged
this way: that needs the trained weights (docs/trainer.md, "Automatic captions").

    flock /tmp/loracord-cpu.lock .venv/bin/python -m bench.caption_speed --tokens 30 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.benchlib import machine


def blip_base():
    """Salesforce/blip-image-captioning-base: ViT-B/16 at 384 px, BERT-base text decoder."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    model = BlipForConditionalGeneration(BlipConfig(vision_config={"image_size": 384, "patch_size": 16},
                                                    text_config={"vocab_size": 30524}))
    return model, {"pixel_values": torch.rand(1, 3, 384, 384)}


def florence2_base():
    """florence-community/Florence-2-base (native class): DaViT at 768 px, BART-base-sized encoder-decoder
    (51289 words and the native conversion's <image> token)."""
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    text = dict(vocab_size=51290, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024)
    config = Florence2Config(text_config=text, vision_config={"projection_dim": 768})
    model = Florence2ForConditionalGeneration(config)
    pixels = torch.rand(1, 3, 768, 768)
    with torch.inference_mode():
        image_tokens = model.get_image_features(pixels)
        image_tokens = (image_tokens if torch.is_tensor(image_tokens) else image_tokens.pooler_output).shape[1]
    task = [0] + [config.image_token_id] * image_tokens + list(range(100, 108)) + [2]  # <s> image, prompt </s>
    return model, {"pixel_values": pixels, "input_ids": torch.tensor([task])}


def smolvlm_256m(crops: int):
    """HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP-B/16 at 512 px (64 tokens a crop after pixel shuffle 4),
    SmolLM2-135M decoder. Its processor splits a 4:3 photo into 4x3 crops and a global view (13)."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    vision = dict(hidden_size=768, image_size=512, patch_size=16, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072)
    text = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49280, max_position_embeddings=8192, rope_theta=100000)
    config = SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=4, image_token_id=49190)
    model = SmolVLMForConditionalGeneration(config)
    ids = [1] * 6 + [config.image_token_id] * (64 * crops) + [2] * 12  # chat prompt around the image tokens
    return model, {"pixel_values": torch.rand(1, crops, 3, 512, 512), "input_ids": torch.tensor([ids]),
                   "pixel_attention_mask": torch.ones(1, crops, 512, 512, dtype=torch.bool)}


CANDIDATES = {"blip-base": blip_base, "florence-2-base": florence2_base,
              "smolvlm-256m (13 crops)": lambda: smolvlm_256m(13), "smolvlm-256m (1 crop)": lambda: smolvlm_256m(1)}


def measure(build, tokens: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model, inputs = build()
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, num_beams=1)
        times.append(time.perf_counter() - start)
    return {"params_m": round(params / 1e6), "tokens": tokens, "new": int(out.shape[1]),
            "best_s": round(min(times), 2), "median_s": round(statistics.median(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=list(CANDIDATES))
    args = parser.parse_args()
    for name in args.only:
        row = {"model": name, **measure(CANDIDATES[name], args.tokens, args.rounds), **machine()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
