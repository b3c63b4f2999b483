"""Shared fixtures: a tiny Llama-style causal LM built and saved locally, and small text sets.

The tiny model goes through the same ``from_pretrained`` path that users hit with hub ids;
only its size is different.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "To be, or not to be, that is the question.",
    "All that glitters is not gold.",
    "The rain in Spain stays mainly in the plain.",
    "Fair is foul, and foul is fair: hover through the fog and filthy air.",
    "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace from day to day.",
    "Out, damned spot! out, I say!",
]


@pytest.fixture(autouse=True, scope="session")
def _quiet_and_isolated(tmp_path_factory):
    """Keep model caches inside the test session and never reach for a network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "LORACORD_CACHE" not in os.environ:
        # The converted built-in model is reused across sessions when a cache exists already.
        os.environ["LORACORD_CACHE"] = str(Path.home() / ".cache" / "loracord")
    yield


@pytest.fixture
def redis():
    """The URL of a redis-server for this test: CI's (LORACORD_TEST_REDIS_URL) or one started here."""
    from storage.testing import redis_url

    try:
        with redis_url() as url:
            yield url
    except LookupError as exc:  # not under CI: no redis-server here
        pytest.skip(str(exc))


def build_tiny_llama(folder: Path, *, vocab_size: int = 512, seed: int = 0) -> Path:
    """Save a 2-layer Llama with a byte-level BPE tokenizer trained on a few sentences."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                        bos_token="<|im_start|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A folder holding a tiny Llama-style model and tokenizer (session-wide, read-only)."""
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def train_tiny_text(root: Path, base: Path, **settings):
    """Train a text run on ``base`` for a few steps, on the 16 tiny examples written under ``root``;
    the run folder is ``root/out``. ``settings`` override the small, fast ones below. Returns the
    trainer's result."""
    from trainer.text.config import TextTrainConfig
    from trainer.text.train import train_text

    data = root / "texts.txt"
    data.write_text("\n\n".join(f"{s} Line {i}." for i, s in enumerate(TINY_CORPUS * 2)), encoding="utf-8")
    chosen = dict(steps=4, lr=5e-3, rank=4, target_modules="all-linear", seq_len=64, batch_size=2, eval_every=2,
                  augment=0.0, lora_dropout=0.0, max_new_tokens=4, precision="fp32", threads=1, prompts=["To be"])
    return train_text(TextTrainConfig(data=[str(data)], out=str(root / "out"), base=str(base), **{**chosen, **settings}))


@pytest.fixture
def text_file(tmp_path) -> Path:
    """A .txt dataset of 16 short examples separated by blank lines."""
    path = tmp_path / "texts.txt"
    lines = [f"{s} Line {i}." for i, s in enumerate(TINY_CORPUS * 2)]
    path.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    return path
