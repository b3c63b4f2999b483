"""The licence a base model is published under, which its adapters and merged models inherit.

Read where it is written: loracord's built-in models carry theirs here; any other base names it
in the ``license`` field of its own model card (``README.md`` in the model's folder, which a hub
download keeps). A base whose licence cannot be found is reported as unknown, never guessed.
"""

from __future__ import annotations

from pathlib import Path

# The built-in models' licences, from their hub cards (HuggingFaceTB/SmolLM2-135M-Instruct).
BUILTIN_LICENCES = {"smollm2-135m": "apache-2.0"}


def base_licence(base_ref: str | None, base_path: str | Path | None = None) -> str | None:
    """The licence id (``apache-2.0``, ``creativeml-openrail-m``, ``other``...) of a base, or None."""
    ref = (base_ref or "").strip().lower()
    if ref in BUILTIN_LICENCES:
        return BUILTIN_LICENCES[ref]
    for folder in (base_path, base_ref):
        card = Path(folder).expanduser() / "README.md" if folder else None
        if card is not None and card.is_file():
            return _card_licence(card)
    return None


def _card_licence(card: Path) -> str | None:
    import yaml
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(card, ignore_metadata_errors=True).data
    except (ValueError, yaml.YAMLError, OSError):
        return None
    licence = data.get("license_name") if data.get("license") == "other" else data.get("license")
    return str(licence) if licence else None
