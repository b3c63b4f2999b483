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


def build_florence2(folder: Path) -> Path:
    """Save a tiny Florence-2 (the default captioner's family, transformers' native class): a
    DaViT of four one-block stages, a one-layer BART, a byte-level BART tokenizer with the
    ``<image>`` token, and CLIP's Pillow image processor at 64 px (5 image tokens)."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import BartTokenizer, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    vocab["<image>"] = len(vocab)
    tokenizer = BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    images = CLIPImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                                   do_center_crop=False, image_seq_length=5)
    text = dict(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=128)
    vision = dict(depths=(1, 1, 1, 1), embed_dim=(8, 16, 32, 32), num_heads=(1, 2, 4, 4), num_groups=(1, 2, 4, 4),
                  projection_dim=32, window_size=2)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(Florence2Config(text_config=text, vision_config=vision,
                                                              image_token_id=tokenizer.image_token_id))
    model.save_pretrained(folder)
    Florence2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder
