"""The model card of a trained adapter: ``RUN/adapter/README.md``, and the base its config names.

An adapter folder leaves the machine (the bot's export zip, a copy by hand, the Hub later), so
what it says about itself must hold elsewhere: the base is named as others load it
(``trainer.models.loadable_name``: a built-in as its hub id, a local folder by its name), the
card shows loading code that runs as written, and no text in it carries a path of this machine.

``model_card(metrics, samples)`` builds the card from what a run records (metrics.json, the
samples); ``write_card(run)`` writes it, and sets ``adapter_config.json``'s
``base_model_name_or_path``, at the end of a run (``trainer/loop.py``), before a worker uploads
the folder.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import kinds
from .hostpaths import scrub_paths
from .image import families
from .licences import base_licence
from .models import BUILTIN_HUB_IDS, BUILTIN_TEXT_MODELS, is_hub_id, loadable_name
from .rundir import RunDir, write_json_atomic

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # trainer.image.export's names, without its imports
GGUF_ADAPTER = "adapter.gguf"  # trainer.text.gguf's file name, without its imports
# What each single-file format an image run may add beside the diffusers file is for (the formats
# trainer.image.families write; metrics.json's adapter_files names the ones a run wrote).
SINGLE_FILES = {
    "kohya": ("lora_kohya.safetensors", "the same LoRA in kohya's format, for AUTOMATIC1111, ComfyUI, Forge, "
                                        "kohya_ss and most other UIs: put it in their LoRA folder"),
    "comfyui": ("lora_comfyui.safetensors", "the same LoRA with its scale folded in, in the layout ComfyUI reads: "
                                            "put it in ComfyUI's `models/loras` folder"),
}

# The settings a card lists, in this order, where the run's config has them. The rest of the
# config names files of the host (data, out) or is the base, which the card names apart.
SETTINGS = ("preset", "steps", "lr", "rank", "alpha", "lora_dropout", "dora", "target_modules", "batch_size",
            "grad_accum", "seq_len", "resolution", "augment", "text_kind", "neftune_alpha", "train_text_encoder",
            "caption_dropout", "loraplus_ratio", "min_snr_gamma", "noise_offset", "warmup_ratio", "weight_decay",
            "max_grad_norm", "val_fraction", "instance_prompt", "seed")
ONLY_WHEN_ON = {"dora"}  # switches a card names only when they are on


def write_card(run: RunDir) -> Path | None:
    """Write ``RUN/adapter/README.md`` from the run's metrics.json and samples, and name the
    loadable base in ``adapter_config.json`` (text runs); returns the card, None without an adapter."""
    if not run.adapter.is_dir() or not run.metrics.is_file():
        return None
    metrics = run.read_metrics()
    samples_file = run.root / "samples.json"
    samples = json.loads(samples_file.read_text(encoding="utf-8")) if samples_file.is_file() else None
    config_file = run.adapter / ADAPTER_CONFIG
    if config_file.is_file():
        write_json_atomic(config_file, portable_adapter_config(json.loads(config_file.read_text(encoding="utf-8")),
                                                               metrics.get("base", "")))
    card = model_card(metrics, samples, roots=(run.root, Path.home()))
    path = run.adapter / CARD_FILE
    card.save(path)
    return path


def portable_adapter_config(config: dict, base: str) -> dict:
    """peft's adapter config with the base named as others load it (peft writes the folder it loaded)."""
    return {**config, "base_model_name_or_path": loadable_name(base or config.get("base_model_name_or_path") or "")}


def model_card(metrics: dict, samples: list[dict] | None = None, *, adapter: str = ".", roots=(),
               beside: set[str] | frozenset[str] = frozenset(), data_files: list[str] | None = None) -> "ModelCard":
    """The adapter's card (a ``huggingface_hub.ModelCard``) from a run's metrics.json and samples.

    ``samples``: a text run's samples.json rows (``prompt``, ``before``, ``after``); image runs
    name their sample grids in the metrics. ``adapter`` is how the loading code names the adapter
    folder: "." (the folder holding this card), or a hub id once the adapter is published there.
    Every text taken from the run is cut free of host paths (``roots``: folders to drop whole).
    ``beside``: the files published with the card (the Hub upload adds the sample grids and a
    GGUF adapter when exported), which it then shows or names; ``data_files``: the training
    files published under ``data/``, only where the session's owner chose to share them.
    """
    from huggingface_hub import ModelCard, ModelCardData

    kind = kinds.recorded(metrics.get("kind"))
    base_ref = metrics.get("base") or ""
    base = loadable_name(base_ref) if base_ref else "its base model"
    config = metrics.get("config") or {}
    clean = _Cleaner(roots, metrics.get("base_path"), config.get("out"), *(config.get("data") or []))
    image = kind.makes_images
    part = families.named(metrics.get("family") or "") or families.DEFAULT
    tags = ["lora", "loracord"] + (["diffusers", "text-to-image", part.HUB_TAG] if image
                                   else ["peft", "transformers", "text-generation"])
    licence = metrics.get("base_licence") or base_licence(base_ref, metrics.get("base_path"))
    trigger = clean(config.get("instance_prompt") or "") if image else ""
    data = ModelCardData(base_model=base if is_hub_id(base) else None, library_name=kind.library,
                         pipeline_tag="text-to-image" if image else "text-generation", tags=tags,
                         **_licence_fields(licence), **({"instance_prompt": trigger} if trigger else {}))
    body = "\n\n".join(piece for piece in (
        f"# {'Image' if image else 'Text'} LoRA adapter for {base}",
        _about(kind, base, base_ref, part.label(metrics.get("prediction_type") or "epsilon")),
        "## Trigger word\n\n" + _trigger(trigger) if image else "",
        "## How to load it\n\n" + (_image_code(base, adapter, metrics, clean) if image
                                   else _text_code(base, adapter, samples, clean, beside)),
        "## Training settings\n\n" + _settings(kind, metrics, config, clean),
        "## Data\n\n" + _data(kind, metrics, clean, data_files),
        "## Results\n\n" + _results(kind, metrics),
        "## Samples\n\n" + (_image_samples(metrics, config, clean, beside) if image
                             else _text_samples(samples, clean)),
        "## Licence\n\n" + _licence_text(licence, base),
    ) if piece)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


# --------------------------------------------------------------------------------------------
# the card's parts


def _about(kind: kinds.RunKind, base: str, base_ref: str, family: str) -> str:
    lines = [f"A LoRA adapter for {kind.base_is.format(family=family)}, **{base}**, trained with loracord (a Discord bot and CLI that "
             "fine-tunes models on a few examples)."]
    builtin = base_ref.strip().lower()
    if builtin in BUILTIN_HUB_IDS:
        lines.append(f"loracord trained it on its built-in model `{builtin}`: the GGUF file "
                     f"`{BUILTIN_TEXT_MODELS[builtin][1]}` of `{base}`, its 4-bit weights dequantized to float32. "
                     "The code below loads the hub's full-precision weights of the same model; their small "
                     "differences from the 4-bit file can shift outputs slightly.")
    elif base_ref and not is_hub_id(base):
        lines.append(f"The base was a local {'file' if base.lower().endswith('.gguf') else 'folder'} named "
                     f"`{base}` on the machine that trained it: point the code below at your copy of it.")
    return "\n\n".join(lines)


def _licence_fields(licence: str | None) -> dict:
    """The card's ``license`` metadata as the Hub reads it: a known id, or ``other`` with its name."""
    if not licence:
        return {}
    known = re.fullmatch(r"(apache-2\.0|mit|cc-by[\w.-]*|openrail[\w+.-]*|creativeml-openrail-m|llama[\w.-]*|gemma|"
                         r"bsd[\w.-]*|gpl[\w.-]*|lgpl[\w.-]*|agpl[\w.-]*|mpl-2\.0|cc0-1\.0|bigscience[\w.-]*)", licence)
    return {"license": licence} if known else {"license": "other", "license_name": licence}


def _licence_text(licence: str | None, base: str) -> str:
    if licence:
        return (f"The adapter is derived from **{base}** and inherits its licence: **{licence}**. "
                "Its terms apply to any use of the adapter with that base.")
    return (f"The base's licence was not recorded: the licence of **{base}** (on its own model card) applies "
            "to this adapter, which is derived from it.")


def _trigger(trigger: str) -> str:
    if not trigger:
        return "None: the adapter trained on its images' own captions, with no shared trigger word."
    return f"Put {_inline(trigger)} in your prompt to call up what the adapter learned."


def _text_code(base: str, adapter: str, samples: list[dict] | None, clean: "_Cleaner",
               beside: set[str] | frozenset[str] = frozenset()) -> str:
    prompts = [clean(s["prompt"]) for s in samples or [] if s.get("prompt")]
    prompt = next((p for p in prompts if "\n" not in p and len(p) <= 80), "Once upon a time")
    # transformers reads a .gguf file from the folder holding it, dequantized
    load = f'".", gguf_file={json.dumps(base)}' if base.lower().endswith(".gguf") else json.dumps(base)
    code = f"""\
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained({load})
tokenizer = AutoTokenizer.from_pretrained({load})
model = PeftModel.from_pretrained(base, {json.dumps(adapter)})

inputs = tokenizer({json.dumps(prompt)}, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=40, do_sample=True, temperature=0.8)
print(tokenizer.decode(output[0], skip_special_tokens=True))"""
    where = ("Run it in this folder (the one holding `adapter_config.json` and `adapter_model.safetensors`), "
             "or put the folder's path in place of `\".\"` in `PeftModel.from_pretrained`." if adapter == "." else "")
    peft = f"With [transformers](https://huggingface.co/docs/transformers) and " \
           f"[peft](https://huggingface.co/docs/peft):\n\n```python\n{code}\n```\n\n{where}".rstrip()
    return f"{peft}\n\n{_llama_cpp(base, beside)}"


def _llama_cpp(base: str, beside) -> str:
    """How llama.cpp (and Ollama, LM Studio) load it: a GGUF base plus the GGUF adapter."""
    here = GGUF_ADAPTER in beside
    made = (f"`{GGUF_ADAPTER}` beside this card is the adapter in llama.cpp's GGUF LoRA format." if here else
            f"`loracord export RUN --gguf` writes the adapter in llama.cpp's GGUF LoRA format, as `{GGUF_ADAPTER}`.")
    return (f"With [llama.cpp](https://github.com/ggml-org/llama.cpp): {made} Load it over {base} in GGUF "
            f"(converted with llama.cpp's `convert_hf_to_gguf.py`, in f16 or f32):\n\n```sh\n"
            f"llama-cli -m base.gguf --lora {GGUF_ADAPTER} -p \"Once upon a time\"\n```\n\n"
            f"In Ollama, a Modelfile with `FROM base.gguf` and `ADAPTER {GGUF_ADAPTER}` does the same. "
            f"`loracord export RUN --gguf --merged` writes instead one GGUF of the base merged with the adapter "
            f"(f16 or q8_0) and a Modelfile naming its chat template, for `ollama create NAME -f Modelfile`.")


def _image_code(base: str, adapter: str, metrics: dict, clean: "_Cleaner") -> str:
    prompts = [clean(p) for p in metrics.get("sample_prompts") or []]
    prompt = prompts[0] if prompts else clean((metrics.get("config") or {}).get("instance_prompt") or "a photo of sks")
    code = f"""\
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained({json.dumps(base)})
pipe.load_lora_weights({json.dumps(adapter)}, weight_name="{DIFFUSERS_FILE}")
image = pipe({json.dumps(prompt)}).images[0]
image.save("sample.png")"""
    where = ("Run it in this folder, or put the folder's path in place of `\".\"`. " if adapter == "." else "")
    written = metrics.get("adapter_files") or {"kohya": SINGLE_FILES["kohya"][0]}  # runs before the record: kohya
    singles = " ".join(f"`{name}` is {what}." for fmt, (name, what) in SINGLE_FILES.items() if fmt in written)
    if metrics.get("single_file_skipped"):  # a DoRA run: the diffusers file alone, and why
        singles = f"No single file for other UIs comes with it: {clean(metrics['single_file_skipped'])}."
    return (f"With [diffusers](https://huggingface.co/docs/diffusers):\n\n```python\n{code}\n```\n\n{where}".rstrip()
            + f"\n\nWith ComfyUI, AUTOMATIC1111, Forge and other UIs: {singles}".rstrip())


def _settings(kind: kinds.RunKind, metrics: dict, config: dict, clean: "_Cleaner") -> str:
    config = dict(config)
    if config.get("alpha") is None and config.get("rank"):  # the configs' documented default
        config["alpha"] = float(config["rank"] * kind.alpha_per_rank)
    shown = {name: config[name] for name in SETTINGS
             if config.get(name) is not None and (config[name] or name not in ONLY_WHEN_ON)}
    if metrics.get("precision"):
        shown["precision"] = metrics["precision"]
    if metrics.get("quantize") not in (None, "none"):  # the frozen base it trained on; it loads into the unquantised one
        shown["base quantised"] = metrics["quantize"]
    rows = [f"| {name} | {clean(_value(value)).replace('|', '&#124;')} |" for name, value in shown.items()]
    return "\n".join(["| setting | value |", "|---|---|", *rows])


def _data(kind: kinds.RunKind, metrics: dict, clean: "_Cleaner", data_files: list[str] | None = None) -> str:
    report = metrics.get("data_report") or {}
    counted = ("train_images", "val_images") if kind.makes_images else ("n_train", "n_val")  # trainer's metrics keys
    train, val = (report.get(key) for key in counted)
    lines = [f"- {train} training {kind.units}, {val} held out for validation" if train is not None
             else "- (not recorded)"]
    if "text_kind" in kind.settings and metrics.get("text_kind"):
        lines.append(f"- kind of text: {metrics['text_kind']}"
                     + (f" ({clean(metrics['text_kind_reason'])})" if metrics.get("text_kind_reason") else ""))
    if metrics.get("tokens_trained"):
        lines.append(f"- {metrics['tokens_trained']:,} tokens trained on")
    lines += _data_kinds(report)
    lines.append(f"- the training files are published with the adapter, under `data/` ({len(data_files)} files)"
                 if data_files else "- the training files themselves are not published")
    return "\n".join(lines)


def _data_kinds(report: dict) -> list[str]:
    """What kinds of examples and files the data held: counts only, never the members' files."""
    lines = []
    if report.get("kinds"):  # text: plain text, chat, prompt/completion
        lines.append("- examples by kind: " + ", ".join(f"{n} {k}" for k, n in sorted(report["kinds"].items())))
    files = report.get("files") or report.get("sources") or []
    suffixes: dict[str, int] = {}
    for name in files:
        suffix = Path(str(name)).suffix.lower() or "(no extension)"
        suffixes[suffix] = suffixes.get(suffix, 0) + 1
    if suffixes:
        lines.append("- files by type: " + ", ".join(f"{n} {s}" for s, n in sorted(suffixes.items())))
    captions = {k: n for k, n in (report.get("caption_sources") or {}).items() if n}
    if captions:  # image: where each image's caption came from
        lines.append("- captions from: " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in captions.items()))
    return lines


def _results(kind: kinds.RunKind, metrics: dict) -> str:
    best, step = metrics.get("best_val_loss"), metrics.get("best_step")
    lines = [f"- steps trained: {metrics.get('steps_done', '?')} ({_stop(metrics.get('stop_reason'))})"]
    if best is not None:
        lines.append(f"- best validation loss: {best:.4f}, at step {step} (the adapter holds that step's weights)")
        if not kind.makes_images:  # a language model's loss: its perplexity too
            perplexity = metrics.get("val_perplexity") or math.exp(min(best, 50))
            lines.append(f"- validation perplexity: {perplexity:.2f}")
    else:
        lines.append("- no validation loss (every example trained)")
    return "\n".join(lines)


def _text_samples(samples: list[dict] | None, clean: "_Cleaner") -> str:
    if not samples:
        return "No samples were drawn."
    parts = ["Drawn at the end of training, and by the base before it for comparison, with the same seed:"]
    for i, row in enumerate(samples, 1):
        parts.append(f"**Prompt {i}:**\n\n{_block(clean(row.get('prompt', '')))}")
        if row.get("before") is not None:
            parts.append(f"Before training:\n\n{_block(clean(row['before']))}")
        parts.append(f"After training:\n\n{_block(clean(row.get('after') or row.get('text') or ''))}")
    return "\n\n".join(parts)


def _image_samples(metrics: dict, config: dict, clean: "_Cleaner", beside=frozenset()) -> str:
    grids = [clean(g) for g in metrics.get("samples") or []]
    prompts = [clean(p) for p in metrics.get("sample_prompts") or []]
    if not grids:
        return "No sample grids were drawn."
    if all(grid in beside for grid in grids):  # published with the card: shown, with their prompts
        seeds = ", ".join(str(s) for s in config.get("sample_seeds") or []) or "?"
        lines = [f"One row per prompt, one column per seed ({seeds}); prompts, top to bottom:", ""]
        lines += [f"{i}. {_inline(p)}" for i, p in enumerate(prompts, 1)] + [""]
        return "\n".join(lines + [f"![{Path(grid).stem}]({grid})" for grid in grids])
    seeds = ", ".join(str(s) for s in config.get("sample_seeds") or [])
    lines = [f"Sample grids in the training run's folder (not in this adapter's): one row per prompt, "
             f"one column per seed ({seeds})." if seeds else "Sample grids in the training run's folder:", ""]
    lines += [f"- `{grid}`" for grid in grids]
    lines += ["", "Prompts, top to bottom:", ""] + [f"{i}. {_inline(p)}" for i, p in enumerate(prompts, 1)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# helpers


class _Cleaner:
    """Text from the run with host paths cut out (``hostpaths.scrub_paths``)."""

    def __init__(self, roots, *more):
        # longest first, so that a folder inside another is dropped whole
        self.roots = sorted({str(r) for r in (*roots, *more) if r}, key=len, reverse=True)

    def __call__(self, text: Any) -> str:
        return scrub_paths(str(text), *self.roots)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _stop(reason: str | None) -> str:
    return {"completed": "all steps", "early_stopped": "stopped early: validation loss stopped improving"}.get(
        reason or "", reason or "?")


def _block(text: str) -> str:
    """``text`` in a fenced block longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _inline(text: str) -> str:
    return "`" + text.replace("`", "'").replace("\n", " ") + "`"
