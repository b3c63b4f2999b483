"""loracord's training library: datasets, models, LoRA training, sampling and export.

Nothing in here knows about Discord. Heavy imports (torch, transformers) happen inside the
functions that need them, so importing ``trainer`` stays cheap.
"""
