"""``caption``: caption a session's images with a vision-language model (``trainer.image.captioner``).

The job names its images by blob hash, so any worker that shares the blob store serves it (on
a GPU where there is one; a CPU does it too, slower). Config::

    {"model": "hub id or folder", "trigger": "sks", "max_tokens": 77,
     "items": [{"id": 3, "blob": HASH, "filename": "cat.png"}, ...],
     "session": 1, "channel": THREAD_ID, "requested_by": USER_ID}

The result lists ``{"item": id, "caption": ...}`` per image, reported to the bot as the job's
``captions`` (``publish_captions``); the bot stores them as the
``model``'s captions (never over a member's own). A model the worker does not have ends the job
``done`` with ``unavailable`` saying why and no captions: the images keep the instance prompt.
Captioning is short: it travels on the ``quick`` lane beside training runs.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from .base import JobKind

KIND = JobKind("caption", run="storage.jobkinds.caption:run_caption", prepare="storage.jobkinds.caption:fetch_images",
               publish="storage.jobkinds.caption:publish_captions",
               priority=10, lane="quick", summary="caption images",
               cancelled_early="cancelled before the images were captioned")


def image_path(run, item: dict):
    name = PurePosixPath(str(item.get("filename") or "image").replace("\\", "/")).name or "image"
    return run.root / "images" / f"{int(item['id']):06d}-{name}"


def fetch_images(blobs, run, config: dict) -> dict:
    """Each image of the job from the blob store into ``RUN/images`` (kept across attempts)."""
    from trainer.errors import UserError

    for item in config.get("items") or []:
        path = image_path(run, item)
        if path.is_file():
            continue
        if not blobs.exists(item["blob"]):
            raise UserError(f"image #{item['id']} is not in the blob store any more; upload it again")
        path.parent.mkdir(parents=True, exist_ok=True)
        blobs.get_file(item["blob"], path)
    return config


def run_caption(config: dict, run, *, resume: bool, cancel) -> dict:
    """Caption every image of the job; ``unavailable`` instead when the model is not here."""
    from trainer.image.captioner import DEFAULT_MAX_TOKENS, CaptionerUnavailable, caption_files

    items = list(config.get("items") or [])
    model = config.get("model")
    if not items or not model:
        return {"status": "done", "captions": [], "model": model}
    try:
        captions = caption_files(model, [image_path(run, item) for item in items], trigger=config.get("trigger") or "",
                                 max_tokens=int(config.get("max_tokens") or DEFAULT_MAX_TOKENS), cancel=cancel)
    except CaptionerUnavailable as exc:
        return {"status": "done", "captions": [], "model": model, "unavailable": str(exc)}
    if cancel.is_set():
        return {"status": "cancelled"}
    return {"status": "done", "model": model,
            "captions": [{"item": item["id"], "caption": text} for item, text in zip(items, captions)]}


def publish_captions(blobs, run, outputs: dict) -> None:
    """The captions (or why there are none) into the job's report, for the bot to store."""
    result = outputs.get("result") or {}
    outputs["captions"] = {key: result[key] for key in ("captions", "model", "unavailable") if key in result}
