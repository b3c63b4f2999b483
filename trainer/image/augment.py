"""Batch augmentation with kornia, on whatever device the batch lives on (the GPU where there is one).

One knob, ``strength`` in [0, 1], scales every transform together: 0 turns augmentation off,
1 is the most a few-image LoRA tolerates before it learns the augmentation instead of the
subject (flips always, rotations up to 10 degrees, crops down to 70 % of the area, mild colour
jitter). Input and output are float batches in [0, 1] of the same shape.
"""

from __future__ import annotations


def build_augmenter(strength: float, size: int | tuple[int, int]):
    """A kornia pipeline for ``strength`` (``None`` when strength is 0) for images of ``size``
    (a side, or (height, width) for an aspect bucket)."""
    if strength <= 0:
        return None
    import kornia.augmentation as K
    import torch

    s = float(min(strength, 1.0))
    height, width = size if isinstance(size, tuple) else (size, size)
    aspect = width / height  # crops keep about the bucket's aspect
    return torch.nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        # Rotation through an affine warp so the corners are reflected, not filled with black.
        K.RandomAffine(degrees=10.0 * s, padding_mode="reflection", p=0.5 * s + 0.2),
        K.RandomResizedCrop(size if isinstance(size, tuple) else (size, size), scale=(1.0 - 0.3 * s, 1.0),
                            ratio=(0.9 * aspect, 1.1 * aspect), p=0.5 * s + 0.2),
        K.ColorJitter(brightness=0.15 * s, contrast=0.15 * s, saturation=0.15 * s, hue=0.03 * s, p=0.5 * s + 0.2),
    )


def augment(batch, strength: float, generator_seed: int | None = None):
    """Augment a float batch in [0, 1] of shape (N, 3, H, W); same shape and range come back.

    kornia draws from torch's global RNG; with ``generator_seed`` the draw is made inside a
    forked RNG so the caller's random stream is left untouched (runs stay reproducible).
    """
    import torch

    augmenter = build_augmenter(strength, tuple(batch.shape[-2:]))
    if augmenter is None:
        return batch
    augmenter = augmenter.to(batch.device)
    devices = [batch.device] if batch.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=generator_seed is not None):
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        with torch.no_grad():
            out = augmenter(batch)
    return out.clamp_(0.0, 1.0)
