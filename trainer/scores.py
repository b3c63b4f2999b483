"""Scores beside samples: numbers that say how a run's samples look, so members judge more than the loss.

Text runs need no extra model: ``text_scores`` gives the held-out perplexity (of the run's
validation split), how much the samples copy the training text (the longest run of words a
sample shares with it) and how varied they are (the share of distinct word 2-grams).

Image runs are scored by a CLIP model loaded through transformers (``load_scorer``: a hub id or
a local folder, safetensors only, never remote code; the server chooses which): ``likeness``
is the mean, over the samples, of the best cosine similarity of a sample's image embedding to
the members' held-out images; ``adherence`` the CLIP score of each sample against its prompt
(100 x cosine, floored at 0, as SimpleTuner and torchmetrics report it). With no scoring model
on the machine (offline, nothing cached) ``load_scorer`` returns None and the run's metrics say
``scores_unavailable``: the bot then says so instead of showing a number.

Every number is written flat into metrics.json as ``score_*``, so it travels with the job's
metrics to the bot (``bot.report.scores_line``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

UNAVAILABLE = "no scoring model could be loaded on this machine"


def words(text: str) -> list[str]:
    return text.lower().split()


def content(example) -> str:
    """A training example's words, whatever its shape (text, prompt and completion, chat turns)."""
    if example.messages is not None:
        return " ".join(m["content"] for m in example.messages)
    return example.text if example.text is not None else f"{example.prompt} {example.completion}"


def longest_shared_run(sample: str, training: Sequence[str]) -> int:
    """The longest run of words ``sample`` shares with any training text (0 when none)."""
    mine = words(sample)
    if not mine:
        return 0
    theirs = [words(t) for t in training]
    longest = 0
    for n in range(1, len(mine) + 1):  # a shared run of n words contains one of n-1: stop at the first miss
        grams = {tuple(mine[i:i + n]) for i in range(len(mine) - n + 1)}
        if not any(tuple(t[i:i + n]) in grams for t in theirs for i in range(len(t) - n + 1)):
            break
        longest = n
    return longest


def distinct_share(samples: Sequence[str], n: int = 2) -> float | None:
    """Distinct word n-grams over all n-grams of the samples (1.0: nothing repeats); None if too short."""
    grams = [tuple(w[i:i + n]) for s in samples for w in [words(s)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def text_scores(samples: Sequence[str], training: Sequence[str], val_loss: float | None) -> dict[str, Any]:
    """``score_heldout_ppl``, ``score_copied_words`` (the most any sample copies) and ``score_distinct_2``."""
    scores: dict[str, Any] = {}
    if val_loss is not None and math.isfinite(val_loss):
        scores["score_heldout_ppl"] = math.exp(min(val_loss, 50))
    if samples:
        scores["score_copied_words"] = max(longest_shared_run(s, training) for s in samples)
        distinct = distinct_share(samples)
        if distinct is not None:
            scores["score_distinct_2"] = distinct
    return scores


def each_text_scores(samples: Sequence[str], training: Sequence[str], val_loss: float | None) -> list[dict[str, Any]]:
    """``text_scores`` of each sample on its own, for the line posted under it (the perplexity is the run's)."""
    return [text_scores([sample], training, val_loss) for sample in samples]


def only_scores(metrics: dict) -> dict[str, Any]:
    """The ``score_*`` numbers (or ``scores_unavailable``) among ``metrics``."""
    return {k: v for k, v in metrics.items() if k.startswith("score_") or k == "scores_unavailable"}


WORDS = {"score_heldout_ppl": "held-out perplexity {:.2f}", "score_copied_words": "longest copied run {} words",
         "score_distinct_2": "distinct word pairs {:.0%}", "score_likeness": "likeness {:.2f}",
         "score_adherence": "prompt adherence {:.1f}"}


def chart_lines(scores: dict) -> list[str]:
    """The scores as short lines for the run's chart; one line saying they are unavailable, where so."""
    lines = [words.format(scores[name]) for name, words in WORDS.items() if scores.get(name) is not None]
    return lines or (["scores unavailable (no scoring model)"] if scores.get("scores_unavailable") else [])


def steering_score(makes_images: bool) -> tuple[str, bool, str]:
    """The score that decides a pair of tries members left open, in a steered round that counts
    scores: ``(name, higher_is_better, words)``. Images: likeness to the held-out images; texts:
    held-out perplexity (copying and variety say more about a sample than about a setting)."""
    if makes_images:
        return "score_likeness", True, "the more alike to your held-out images"
    return "score_heldout_ppl", False, "the lower held-out perplexity"


def load_scorer(ref: str | None):
    """``(model, processor)`` of the CLIP model ``ref`` names, or None where none can be loaded (offline)."""
    if not ref:
        return None
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(ref, use_safetensors=True, trust_remote_code=False).eval()
        processor = CLIPProcessor.from_pretrained(ref, trust_remote_code=False)
    except (OSError, ValueError):  # not cached and no network, or not a CLIP folder
        return None
    return model, processor


def image_scores(scorer, images: Sequence, references: Sequence, prompts: Sequence[str]) -> dict[str, Any]:
    """``score_likeness`` (to the held-out ``references``) and ``score_adherence`` (to ``prompts``,
    one per image); ``{"scores_unavailable": why}`` when ``scorer`` is None."""
    if scorer is None:
        return {"scores_unavailable": UNAVAILABLE}
    import torch

    model, processor = scorer
    with torch.no_grad():
        mine = _unit(model.get_image_features(**processor(images=list(images), return_tensors="pt")))
        scores: dict[str, Any] = {}
        if references:
            theirs = _unit(model.get_image_features(**processor(images=list(references), return_tensors="pt")))
            scores["score_likeness"] = float((mine @ theirs.T).max(dim=1).values.mean())
        if prompts:
            text = processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True)
            said = _unit(model.get_text_features(**text))
            scores["score_adherence"] = float((100 * (mine * said).sum(dim=1)).clamp(min=0).mean())
    return scores


def _unit(features):
    features = getattr(features, "pooler_output", features)  # some versions return an output object
    return features / features.norm(dim=-1, keepdim=True)
