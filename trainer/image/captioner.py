"""Captions written by a vision-language model, for images nobody captioned.

The model is any one transformers loads natively as ``AutoModelForImageTextToText`` with its
``AutoProcessor`` (BLIP, Florence-2, SmolVLM, ...): from a hub id in the local cache or a local
folder, safetensors only, never remote code. A model the machine does not have (offline, or
never downloaded) raises ``CaptionerUnavailable``: the caller says so and the images keep
training on the instance prompt. Each caption starts with the session's trigger word and is
cut to what the base family's text encoder reads (``trainer.captions.fit_caption``).

``caption_job`` is what the ``caption`` job kind runs (``storage.jobkinds.caption``),
``caption_folder`` what ``loracord caption DATA`` runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..captions import CAPTION_SUFFIX, fit_caption, with_trigger
from ..errors import ModelError

DEFAULT_MODEL = "florence-community/Florence-2-base"  # the native conversion; why: docs/trainer.md, "Automatic captions"
DEFAULT_MAX_TOKENS = 77  # CLIP's length: what SD and SDXL read of a caption
FLORENCE_TASK = "<DETAILED_CAPTION>"  # Florence-2 takes a task token for a prompt
CHAT_PROMPT = "Describe this image in one sentence."
NO_PROMPT = ("blip", "git")  # captioners that caption an image with no text at all
BATCH = 4
MAX_NEW_TOKENS = 48
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class CaptionerUnavailable(ModelError):
    """The captioning model is not on this machine (and the hub cannot be reached)."""


@dataclass
class Captioner:
    name: str
    processor: object
    model: object
    device: str

    @property
    def model_type(self) -> str:
        return self.model.config.model_type


def load_captioner(name: str) -> Captioner:
    """Load ``name`` (hub id or local folder) natively; ``CaptionerUnavailable`` when it is not
    here, ``ModelError`` when transformers cannot load it without remote code."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=False)
        model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=False, use_safetensors=True,
                                                            dtype=dtype)
    except OSError as exc:  # not cached and no hub: the files are missing, whatever the wording
        raise CaptionerUnavailable(f"the captioning model {name} is not on this machine ({_first_line(exc)})") from None
    except ValueError as exc:  # an architecture transformers has no native class for
        raise ModelError(f"{name} is not a captioning model transformers loads natively "
                         f"(loracord never runs a model's own code): {_first_line(exc)}") from None
    return Captioner(name, processor, model.to(device).eval(), device)


def caption_images(captioner: Captioner, images: list, *, trigger: str = "",
                   max_tokens: int = DEFAULT_MAX_TOKENS, cancel=None) -> list[str]:
    """One caption per PIL image, in order: the trigger word first, cut to ``max_tokens``."""
    import torch

    captions: list[str] = []
    for start in range(0, len(images), BATCH):
        if cancel is not None and cancel.is_set():
            break
        batch = images[start:start + BATCH]
        inputs = _inputs(captioner, batch).to(captioner.device)
        with torch.inference_mode():
            out = captioner.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
        if "input_ids" in inputs and not captioner.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1]:]  # a decoder-only model repeats its prompt first
        for text in captioner.processor.batch_decode(out, skip_special_tokens=True):
            captions.append(fit_caption(with_trigger(_clean(text), trigger), max_tokens)[0])
    return captions


def _inputs(captioner: Captioner, batch: list):
    processor, kind = captioner.processor, captioner.model_type
    if kind in NO_PROMPT:
        return processor(images=batch, return_tensors="pt")
    if kind == "florence2":
        return processor(text=[FLORENCE_TASK] * len(batch), images=batch, return_tensors="pt")
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CHAT_PROMPT}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    return processor(text=[prompt] * len(batch), images=[[image] for image in batch], return_tensors="pt",
                     padding=True)


def _clean(text: str) -> str:
    """A model's caption on one line, without Florence's task tokens or a trailing full stop."""
    text = re.sub(r"<[^>]{1,40}>", " ", text)
    return re.sub(r"\s+", " ", text).strip().rstrip(".")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def open_image(path: str | Path):
    """An image as the trainer reads it: upright, RGB."""
    from PIL import Image, ImageOps

    from .data import to_rgb

    with Image.open(path) as image:
        return to_rgb(ImageOps.exif_transpose(image))


def caption_files(model: str, paths: list[Path], *, trigger: str = "", max_tokens: int = DEFAULT_MAX_TOKENS,
                  cancel=None) -> list[str]:
    """Captions of the image files at ``paths`` by ``model`` (loaded once)."""
    captioner = load_captioner(model)
    return caption_images(captioner, [open_image(p) for p in paths], trigger=trigger, max_tokens=max_tokens,
                          cancel=cancel)


def caption_folder(folder: str | Path, model: str = DEFAULT_MODEL, *, trigger: str = "",
                   max_tokens: int = DEFAULT_MAX_TOKENS, overwrite: bool = False) -> dict[str, str]:
    """Write a sidecar ``.txt`` caption beside each image of ``folder`` (recursively) that has none
    (every image with ``overwrite``); returns ``{image path: caption}`` of those written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    todo = [p for p in images if overwrite or not p.with_suffix(CAPTION_SUFFIX).exists()]
    if not todo:
        return {}
    written = {}
    for path, caption in zip(todo, caption_files(model, todo, trigger=trigger, max_tokens=max_tokens)):
        path.with_suffix(CAPTION_SUFFIX).write_text(caption + "\n", encoding="utf-8")
        written[str(path)] = caption
    return written
