"""A text run's base merged with its adapter, as one GGUF that llama.cpp and Ollama run by themselves:
``loracord export RUN --gguf --merged [--outtype f16|q8_0]``.

The base is loaded with transformers (safetensors, never remote code), the adapter applied with peft
and merged in float32 (``merge_and_unload``, DoRA included), and the result written by the rules of
llama.cpp's ``convert_hf_to_gguf.py`` for the architectures in ``trainer.text.gguf.ARCHITECTURES``:
gguf's own tensor names, Llama's q and k rows in its rotary order, a tied output left to the token
embedding, 1-D tensors in float32 and the rest in f16 or q8_0 (gguf's own quantizer, f16 where a row
does not split into q8_0 blocks); a byte-level BPE vocabulary as ``gpt2`` with the converter's name for
its pre-tokenizer, the merges, special tokens and chat template through ``gguf.SpecialVocab``.
A ``Modelfile`` beside it makes an Ollama model of it. Both are written under ``.part`` names and
renamed at the end, so an error never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..rundir import which_step
from .gguf import _architecture, _rope_permute, base_folder_of

OUTTYPES = ("f16", "q8_0")
MODELFILE = "Modelfile"
# convert_hf_to_gguf's probe text for the pre-tokenizer, and the names it gives the token ids' sha256
# for the byte-level vocabularies of the bases loracord writes (from its get_vocab_base_pre).
_PROBE = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 '
          '3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
          '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}
# ChatML (SmolLM2-Instruct, Qwen) in Ollama's Go template: Ollama puts the Modelfile's SYSTEM first
# among .Messages when a chat has no system message of its own.
_CHATML_OLLAMA = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
                  '<|im_start|>assistant\n')


@dataclass(frozen=True)
class MergedGguf:
    path: Path  # the .gguf
    files: tuple[Path, ...]  # the .gguf and its Modelfile
    outtype: str
    arch: str  # llama.cpp's name of the architecture ("llama")
    chat_template: str  # "ChatML", "the base's own (not converted)" or "none"
    note: str = ""  # which step's adapter a stopped run's file holds


def export_merged_gguf(run_root: str | Path, out_dir: str | Path, *, outtype: str = "f16",
                       may_load: bool = True) -> MergedGguf:
    """Write ``out_dir/merged-<outtype>.gguf`` (base + the run's adapter, merged) and ``out_dir/Modelfile``."""
    import torch
    from peft import PeftModel

    from ..kinds import recorded
    from ..models import load_causal_lm, loadable_name
    from ..rundir import RunDir

    if outtype not in OUTTYPES:
        raise UserError(f"A merged GGUF is written as {' or '.join(OUTTYPES)}, not {outtype!r}: pass --outtype "
                        f"{OUTTYPES[0]} (exact) or {OUTTYPES[1]} (half the size).")
    run = RunDir.open(run_root)
    metrics = run.read_metrics()
    if recorded(metrics.get("kind")).makes_images:
        raise UserError("A merged GGUF is for text runs (llama.cpp runs language models); for an image run use "
                        "the adapter's safetensors files in RUN/adapter/.")
    if not (run.adapter / "adapter_model.safetensors").is_file():
        raise UserError(f"{run.root} has no trained adapter yet (adapter/adapter_model.safetensors).")
    folder = base_folder_of(metrics, may_load=may_load)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = _architecture(config, "a merged GGUF")[0].lower()
    _check_rope(config)
    model, tokenizer = load_causal_lm(folder, dtype=torch.float32)
    _vocab_kind(folder, tokenizer)  # refuse an unwritable vocabulary before merging
    model = PeftModel.from_pretrained(model, run.adapter).merge_and_unload()
    out = Path(out_dir) / f"merged-{outtype}.gguf"
    base = loadable_name(metrics.get("base") or folder.name)  # a hub id or a name, never this machine's path
    write_full_gguf(model, tokenizer, folder, out, outtype=outtype, name=f"{base} + loracord adapter")
    template, modelfile = write_modelfile(out, tokenizer, base=base)
    return MergedGguf(out, (out, modelfile), outtype, arch, template, which_step(metrics))


def estimate(metrics: dict, adapter_bytes: int, *, outtype: str = "f16", **options) -> int | None:
    """The merged GGUF's size before it is made (``trainer.export``'s estimate): the base's parameters
    from its safetensors headers at 2 bytes (f16) or 34 bytes per 32 (q8_0's blocks); None where the base
    is not on this machine."""
    from ..quantize import count_params

    try:
        folder = base_folder_of(metrics, may_load=False)
    except UserError:
        return None
    return count_params(folder) * (2 if outtype == "f16" else 34) // (1 if outtype == "f16" else 32)


def write_full_gguf(model, tokenizer, folder: Path, out: Path, *, outtype: str = "f16", name: str = "") -> Path:
    """Write the transformers ``model`` (its config and tokenizer saved in ``folder``) as a whole GGUF."""
    import gguf

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch_name, permute_qk = _architecture(config, "a merged GGUF")
    arch = gguf.MODEL_ARCH[arch_name]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or folder.name)
        _add_hparams(writer, config, outtype)
        _add_vocab(writer, tokenizer, folder, int(config["vocab_size"]))
        _add_tensors(writer, model, config, gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"])),
                     outtype, permute_qk)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    finally:  # on an error: no half file left behind
        writer.close()
        tmp.unlink(missing_ok=True)
    return out


def _check_rope(config: dict) -> None:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind != "default":
        raise UserError(f"The base scales its rotary embedding ({kind}), which loracord's merged GGUF does not "
                        "write yet: export the adapter alone (--gguf without --merged) and load it over a GGUF of "
                        "the base made by llama.cpp's convert_hf_to_gguf.py.")


def _add_hparams(writer, config: dict, outtype: str) -> None:
    """convert_hf_to_gguf's TextModel and LlamaModel parameters, plain rotary embedding only."""
    import gguf

    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta")
                                    or config.get("rope_theta") or 10000.0))
    writer.add_rope_dimension_count(head_dim)
    if config.get("head_dim"):  # Qwen3's heads are wider than hidden / heads
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(int(config["vocab_size"]))
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if outtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _vocab_kind(folder: Path, tokenizer) -> str:
    """llama.cpp's name for the base's pre-tokenizer; refuses vocabularies written otherwise than byte-level BPE."""
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError("loracord writes merged GGUFs for byte-level BPE vocabularies (SmolLM2, Qwen, Llama 3); "
                        "this base's tokenizer is another kind: export the adapter alone (--gguf without --merged) "
                        "and load it over a GGUF of the base made by llama.cpp's convert_hf_to_gguf.py.")
    digest = hashlib.sha256(str(tokenizer.encode(_PROBE)).encode()).hexdigest()
    if digest in _PRE_TOKENIZERS:
        return _PRE_TOKENIZERS[digest]
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # GPT-2's own split, over a vocabulary of its own (the tests' tiny Llama)
    raise UserError("This base's pre-tokenizer is none llama.cpp knows by name here: export the adapter alone "
                    "(--gguf without --merged) and load it over a GGUF of the base made by llama.cpp's "
                    "convert_hf_to_gguf.py.")


def _add_vocab(writer, tokenizer, folder: Path, vocab_size: int) -> None:
    """The vocabulary as convert_hf_to_gguf's ``_set_vocab_gpt2``: ids past the tokenizer's are padding."""
    import gguf

    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_vocab_kind(folder, tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    # What transformers' tokenizer adds around a text is what llama.cpp should add too.
    ids, bos, eos = tokenizer("a")["input_ids"], tokenizer.bos_token_id, tokenizer.eos_token_id
    special.add_special_token.setdefault("bos", bos is not None and ids[0] == bos)
    special.add_special_token.setdefault("eos", eos is not None and ids[-1] == eos)
    special.add_to_gguf(writer, quiet=True)


def _add_tensors(writer, model, config: dict, names, outtype: str, permute_qk: bool) -> None:
    import gguf
    from gguf.quants import QuantError, quantize

    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reads a missing output as the token embedding
        array = tensor.detach().float().numpy()
        if permute_qk and key.endswith(("q_proj.weight", "k_proj.weight")):
            array = _rope_permute(array, heads if key.endswith("q_proj.weight") else kv)
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UserError(f"llama.cpp has no tensor for the base's {key!r}; loracord cannot write this model.")
        if array.ndim < 2 or key.endswith("norm.weight"):
            writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
            continue
        if outtype == "q8_0":
            try:
                writer.add_tensor(target, quantize(array, gguf.GGMLQuantizationType.Q8_0),
                                  raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                continue
            except QuantError:  # rows not a multiple of 32: f16, as the converter falls back
                pass
        writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float16))


def write_modelfile(gguf_path: Path, tokenizer, *, base: str) -> tuple[str, Path]:
    """An Ollama Modelfile beside ``gguf_path``; returns (which chat template, its path)."""
    template = getattr(tokenizer, "chat_template", None)
    lines = [f"# Ollama model made by loracord: {base} merged with a LoRA adapter.",
             f"# ollama create NAME -f {MODELFILE}", f"FROM ./{gguf_path.name}"]
    if isinstance(template, str) and "<|im_start|>" in template and "<|im_end|>" in template:
        kind = "ChatML"
        lines[1:1] = ["# Chat template: ChatML (<|im_start|>role ... <|im_end|>), the base's own, written in "
                      "Ollama's form below."]
        lines += [f'TEMPLATE """{_CHATML_OLLAMA}"""']
        system = _default_system(tokenizer)
        if system:
            lines += [f'SYSTEM """{system}"""']
        stops = ["<|im_end|>"]
    elif template:
        kind = "the base's own (not converted)"
        lines[1:1] = ["# Chat template: the base's own, carried in the GGUF as tokenizer.chat_template; loracord",
                      "# converts only ChatML. Ollama picks its template from that field when it knows the template;",
                      "# otherwise write a TEMPLATE here."]
        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    else:
        kind = "none"
        lines[1:1] = ["# Chat template: none; the base has no chat template, so this model completes plain text."]
        stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    path = gguf_path.with_name(MODELFILE)
    part = path.with_name(MODELFILE + ".part")
    part.write_text("\n".join(lines) + "\n", encoding="utf-8")
    part.replace(path)
    return kind, path


def _default_system(tokenizer) -> str:
    """The system message a ChatML template puts first when a chat has none (SmolLM2's), else ''."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    return text[len(head):text.index("<|im_end|>")] if text.startswith(head) else ""
