"""The licence a base model is published under, which its adapters and merged models inherit.

Read where it is written: loracord's built-in models carry theirs here; any other base names it
in the ``license`` field of its own model card (``README.md`` in the model's folder, which a hub
download keeps). A base whose licence cannot be found is reported as unknown, never guessed.
"""

from __future__ import annotations

from pathlib import Path

# Licences under which loracord writes a merged checkpoint (the base with a LoRA fused in, which
# redistributes the base): those that allow redistributing the model and derivatives of it, the
# OpenRAIL ones on condition that their use restrictions travel with it (the file's metadata names
# the licence). Every other licence, "other" with a name loracord does not know, and a base whose
# licence cannot be found are refused: a non-commercial or gated licence (FLUX.1 [dev]'s
# flux-1-dev-non-commercial-license, Stability's community licences) may forbid it, and guessing
# wrong would publish someone's model against its terms.
REDISTRIBUTABLE = frozenset({"creativeml-openrail-m", "openrail", "openrail++", "bigscience-openrail-m",
                             "apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc0-1.0"})

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


def merge_refusal(licence: str | None) -> str | None:
    """Why a merged checkpoint of a base under ``licence`` is refused, or None when its licence allows it
    (``REDISTRIBUTABLE``). The adapter itself (the trained difference, not the base) is never refused."""
    if not licence:
        return ("loracord could not find the base's licence (the `license` field of its model card, README.md), "
                "and a merged checkpoint redistributes the base; export the adapter itself instead "
                "(RUN/adapter/), which loads onto the base wherever it is used.")
    if licence.strip().lower() not in REDISTRIBUTABLE:
        return (f"The base's licence, {licence}, is not one under which loracord redistributes a model "
                f"({', '.join(sorted(REDISTRIBUTABLE))}), and a merged checkpoint redistributes the base; "
                "export the adapter itself instead (RUN/adapter/), which loads onto the base wherever it is used.")
    return None
