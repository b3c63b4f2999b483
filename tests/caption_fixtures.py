"""A tiny captioning model, built locally for the caption tests.

There is no model hub here, so the tests build a BLIP image-captioning model (the class
``AutoModelForImageTextToText`` loads for ``model_type: blip``) with random weights and a tiny
config, a BERT word-piece tokenizer over a dozen words and BLIP's Pillow image processor, save
them with ``save_pretrained`` (safetensors) and load them back through the same
``from_pretrained`` path a hub id takes. Its captions are random words from that vocabulary:
enough to prove that every image gets one, through every layer.

Import the fixture with ``from tests.caption_fixtures import tiny_captioner``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "cat", "dog", "red", "on", "the",
         "grass", "pattern", "blue", "tree"]
SIDE = 32


def build_captioner(folder: Path) -> Path:
    """Save a tiny BLIP captioner (model, tokenizer, image processor) into ``folder``."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, bos_token="[DEC]", model_max_length=SIDE)
    text = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=SIDE, bos_token_id=WORDS.index("[DEC]"), pad_token_id=0,
                sep_token_id=WORDS.index("[SEP]"), eos_token_id=WORDS.index("[SEP]"))
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=SIDE,
                  patch_size=8)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": SIDE, "width": SIDE}),
                              tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory) -> Path:
    return build_captioner(tmp_path_factory.mktemp("captioner") / "tiny-blip")
