"""Loading a base and a GGUF LoRA adapter in llama.cpp (through llama-cpp-python) and comparing with peft.

``write_llama_base_gguf`` writes a Llama-architecture base saved by transformers as a float32
GGUF that llama.cpp loads, by the rules of llama.cpp's ``convert_hf_to_gguf.py`` for Llama
(tensor names from gguf's own name map, q and k rows in its rotary order, a byte-level BPE
vocabulary as ``gpt2``): the tests' tiny Llama has no GGUF of its own. The token ids fed to
both sides are the same, so the vocabulary only has to load, not to tokenize.

``logit_changes`` gives, per prompt, the next-token logits of the base and of base + LoRA in
llama.cpp and in peft: the LoRA's change to the logits is what the adapter file decides.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROMPTS = ("Once upon a time", "The capital of France is", "To be, or not to be")


def write_llama_base_gguf(folder: Path, out: Path) -> Path:
    import gguf

    from trainer.text.gguf import _rope_permute, read_safetensors

    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    heads, kv, layers = config["num_attention_heads"], config["num_key_value_heads"], config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta")
                                    or config.get("rope_theta") or 10000.0))
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    added = {t["id"]: t["content"] for t in tokenizer.get("added_tokens", [])}
    tokens = [added.get(i, tok) for tok, i in vocab] + [added[i] for i in sorted(added) if i >= len(vocab)]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), config["vocab_size"])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in added else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    merges = tokenizer["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(config.get("bos_token_id") or 0)
    writer.add_eos_token_id(config.get("eos_token_id") or 0)
    weights = {}
    for path in sorted(folder.glob("*.safetensors")):
        weights.update(read_safetensors(path))
    for name, array in weights.items():
        if name.endswith("q_proj.weight"):
            array = _rope_permute(array, heads)
        elif name.endswith("k_proj.weight"):
            array = _rope_permute(array, kv)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"no GGUF name for {name}")
        writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def llama_cpp_logits(base_gguf: Path, lora_gguf: Path | None, prompts_ids) -> list[np.ndarray]:
    """Next-token logits after each prompt, as llama.cpp computes them (base, or base + LoRA at scale 1)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(base_gguf), lora_path=str(lora_gguf) if lora_gguf else None, n_ctx=64,
                          logits_all=True, verbose=False, n_threads=2, seed=0)
    out = []
    for ids in prompts_ids:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[len(ids) - 1], dtype=np.float64))
    llm.close()
    return out


def peft_logits(model, prompts_ids) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(base, base + LoRA) next-token logits of a peft model after each prompt."""
    import torch

    base, lora = [], []
    with torch.no_grad():
        for ids in prompts_ids:
            batch = torch.tensor([ids])
            lora.append(model(input_ids=batch).logits[0, -1].double().numpy())
            with model.disable_adapter():
                base.append(model(input_ids=batch).logits[0, -1].double().numpy())
    return base, lora


def relative_change_error(cpp_base, cpp_lora, hf_base, hf_lora) -> list[float]:
    """Per prompt: |llama.cpp's change of the logits - peft's| / |peft's change| (L2 over the vocabulary)."""
    return [float(np.linalg.norm((cl - cb) - (hl - hb)) / np.linalg.norm(hl - hb))
            for cb, cl, hb, hl in zip(cpp_base, cpp_lora, hf_base, hf_lora)]
