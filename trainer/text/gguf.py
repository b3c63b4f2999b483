"""A text adapter in llama.cpp's GGUF LoRA format: ``loracord export RUN --gguf``, ``/adapter export format:gguf``.

Follows llama.cpp's ``convert_lora_to_gguf.py``, which reuses ``convert_hf_to_gguf.py``'s rules
for the base architecture: each peft pair ``...<module>.lora_A/B.weight`` becomes
``<gguf name>.weight.lora_a`` / ``.lora_b`` under the base tensor's GGUF name (``blk.N.attn_q``
...), with the rows of B reordered wherever the base converter reorders the base weight's rows
(Llama's q and k projections, for its rotary layout); the file's header says ``general.type =
adapter``, ``adapter.type = lora`` and ``adapter.lora.alpha``. llama.cpp scales each pair by
alpha / rank (rank from the tensor), as plain LoRA does; where peft scales otherwise (rsLoRA,
per-layer rank or alpha patterns), the difference is folded into B so the update is the same.

Only the architectures whose rules are written here are converted; others are refused by name.
It needs numpy and gguf only, not torch: the bot converts a small adapter in a thread of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

FILE = "adapter.gguf"  # trainer.card.GGUF_ADAPTER
# transformers' architecture -> (llama.cpp's architecture, rows of B reordered as the base converter does)
ARCHITECTURES = {
    "LlamaForCausalLM": ("LLAMA", True),
    "MistralForCausalLM": ("LLAMA", True),
    "Qwen2ForCausalLM": ("QWEN2", False),
    "Qwen3ForCausalLM": ("QWEN3", False),
}


@dataclass(frozen=True)
class GgufAdapter:
    path: Path
    arch: str  # llama.cpp's name of the base architecture ("llama")
    alpha: float
    tensors: int
    note: str = ""  # e.g. which step's adapter a cancelled run's export holds


def export_gguf(run_root: str | Path, out_dir: str | Path, *, may_load: bool = True) -> GgufAdapter:
    """Write ``out_dir/adapter.gguf`` from a text run's adapter; refuses what llama.cpp cannot load."""
    from ..kinds import recorded
    from ..rundir import RunDir, which_step

    run = RunDir.open(run_root)
    metrics = run.read_metrics()
    if recorded(metrics.get("kind")).makes_images:
        raise UserError("GGUF is for text adapters (llama.cpp runs language models); for an image run use "
                        "the adapter's safetensors files in RUN/adapter/.")
    if not (run.adapter / "adapter_model.safetensors").is_file():
        raise UserError(f"{run.root} has no trained adapter yet (adapter/adapter_model.safetensors).")
    base_config = base_config_of(metrics, may_load=may_load)
    out = Path(out_dir) / FILE
    written = write_gguf_adapter(run.adapter, base_config, out, name=f"loracord adapter for {metrics.get('base')}")
    note = which_step(metrics)
    return GgufAdapter(out, written[0], written[1], written[2], note)


def write_gguf_adapter(adapter_dir: Path, base_config: dict, out: Path, *, name: str = "loracord adapter"):
    """Convert the peft folder ``adapter_dir`` for the base whose config.json is ``base_config``;
    returns (architecture, alpha, tensor count)."""
    import gguf

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    arch_name, permute_qk = _architecture(base_config)
    _check_supported(config)
    arch = gguf.MODEL_ARCH[arch_name]
    names = gguf.get_tensor_name_map(arch, int(base_config["num_hidden_layers"]))
    alpha = float(config.get("lora_alpha") or config["r"])
    pairs = _pairs(read_safetensors(adapter_dir / "adapter_model.safetensors"))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".gguf.part")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    count = 0
    for module, (a, b) in sorted(pairs.items()):
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise UserError(f"llama.cpp has no tensor for the adapted layer {module!r}: train with target modules "
                            "among the attention and MLP projections.")
        b = b * (_peft_scale(config, module, a.shape[0]) / (alpha / a.shape[0]))  # fold what alpha/rank misses
        if permute_qk and module.endswith(("q_proj", "k_proj")):
            heads = int(base_config["num_attention_heads"])
            kv = int(base_config.get("num_key_value_heads") or heads) if module.endswith("k_proj") else heads
            b = _rope_permute(b, kv)
        writer.add_tensor(target + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(target + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
        count += 2
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return gguf.MODEL_ARCH_NAMES[arch], alpha, count


def _architecture(base_config: dict, what: str = "a GGUF adapter") -> tuple[str, bool]:
    arch = (base_config.get("architectures") or ["?"])[0]
    if arch not in ARCHITECTURES:
        raise UserError(f"loracord cannot write {what} for a {arch} base yet: it writes them for "
                        f"{', '.join(ARCHITECTURES)} bases (llama.cpp's own converter handles more).")
    return ARCHITECTURES[arch]


def _check_supported(config: dict) -> None:
    """Refuse the peft options llama.cpp's LoRA cannot express."""
    if config.get("use_dora"):
        raise UserError("llama.cpp cannot load DoRA adapters: train without dora to export GGUF.")
    if config.get("modules_to_save"):
        raise UserError(f"The adapter saves whole layers ({', '.join(config['modules_to_save'])}), which a GGUF "
                        "LoRA cannot hold.")
    if config.get("lora_bias"):
        raise UserError("The adapter trains LoRA biases, which llama.cpp's LoRA cannot hold.")


def _pairs(tensors: dict) -> dict:
    """{module path as in the base ("model.layers.0.self_attn.q_proj"): (A, B)} from peft's tensors."""
    pairs: dict[str, list] = {}
    for key, tensor in tensors.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            raise UserError(f"The adapter holds {key!r}, which is no LoRA pair; llama.cpp cannot load it.")
        module = key.replace("base_model.model.", "", 1).rsplit(".lora_", 1)[0]
        pairs.setdefault(module, [None, None])[0 if ".lora_A." in key else 1] = tensor
    return {m: (a, b) for m, (a, b) in pairs.items() if a is not None and b is not None}


def _peft_scale(config: dict, module: str, rank: int) -> float:
    """The factor peft multiplies B @ A by for ``module`` (lora_alpha / r, or / sqrt(r) for rsLoRA)."""
    import math

    alpha = float(config.get("lora_alpha") or config["r"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module.endswith(pattern) or pattern in module:
            alpha = float(value)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _rope_permute(b, heads: int):
    """convert_hf_to_gguf's ``LlamaModel.permute`` on the rows of B (the output rows of q or k)."""
    rows = b.shape[0]
    return b.reshape(heads, 2, rows // heads // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def read_safetensors(path: Path) -> dict:
    """{name: float32 array} from a safetensors file, bf16 included (which numpy has no type for)."""
    import struct

    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + size]), memoryview(raw)[8 + size:]
    types = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in types:
            raise UserError(f"The adapter's tensor {name!r} is stored as {info['dtype']}, which is no float type.")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=types[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array.astype(np.float32)
    return out


def base_config_of(metrics: dict, *, may_load: bool = True) -> dict:
    """The base's config.json (``base_folder_of``'s)."""
    return json.loads((base_folder_of(metrics, may_load=may_load) / "config.json").read_text(encoding="utf-8"))


def base_folder_of(metrics: dict, *, may_load: bool = True) -> Path:
    """The base's folder: the one the run trained on, a built-in's converted copy or the hub cache;
    else (``may_load``) fetched or converted once by ``resolve_base``, which imports torch."""
    from ..models import BUILTIN_TEXT_MODELS, cache_dir, is_hub_id, resolve_base

    base = (metrics.get("base") or "").strip()
    places = [Path(metrics.get("base_path") or "/nonexistent"), Path(base).expanduser()]
    if base.lower() in BUILTIN_TEXT_MODELS:
        places.append(cache_dir() / "models" / base.lower())
    if is_hub_id(base):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "config.json")
        if isinstance(cached, str):
            places.append(Path(cached).parent)
    for folder in places:
        if (folder / "config.json").is_file():
            return folder
    if not may_load:
        raise UserError(f"The base {base!r}'s config.json is not on this machine; export the GGUF where the run "
                        "trained, with `loracord export RUN --gguf`.")
    return resolve_base(base)

