"""The dataset report card: how a session's data measures up, and the preset the bot would pick.

``report_card`` reads the whole dataset the way the trainer will (text through
``read_text_examples``, images through ``load_images``) and turns it into graded lines and
concrete advice. It runs off the event loop; the cog only formats what it returns.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from storage.blobs import BlobStore
from storage.db import DatasetItem
from trainer import kinds
from trainer.errors import DataError
from trainer.folds import FOLDS_BELOW, cv_trials, folds_for
from trainer.image.sizes import describe_step_time
from trainer.limits import min_image_side

from .display import scrub_paths

# What works for each kind: (too few below, good from, what it counts); sources in trainer presets' docstrings.
TARGETS = {kind.name: (kind.min_examples, kind.good_from, kind.units) for kind in kinds.KINDS.values()}

# The trainer's presets (trainer.presets, docs/presets.md), in a member's words.
PRESETS = {
    "quick": "a short first run, a few times shorter, to see whether the data works",
    "balanced": "steps, rank and learning rate sized to your data",
    "best": "twice the passes and capacity at a lower rate, for the last bit of quality",
}


@dataclass
class ReportCard:
    kind: str
    count: int = 0
    grade: str = "empty"
    lines: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)
    problem: str | None = None
    """Why the trainer cannot read the dataset as it is, when it cannot."""
    count_advice: str | None = None
    """The advice about how many examples there are (also first in ``advice``)."""
    preset: str = "quick"
    preset_why: str = ""


def pick_preset(kind: str, count: int) -> tuple[str, str]:
    """The preset for a dataset of ``count`` examples, and the reason in a member's words."""
    few, good, unit = TARGETS[kind]
    if count < good:
        return "quick", (f"with {count} {unit}, a quick run shows within minutes whether the data teaches "
                         f"the model anything, before you spend longer runs on it")
    if count < 100:
        return "balanced", f"{count} {unit} is enough for the trainer to size steps and rank to your data"
    return "best", f"{count} {unit} can carry a longer, gentler run with more capacity"


def first_run(preset: str, device: str) -> str:
    """The first training step to take once the data is ready (the README and the playground say the same).

    On a CPU a preset's run takes a while, so a first run of 10 steps shows the whole path (progress,
    samples, adapter) in a few minutes; on a GPU the preset's run is the first step."""
    if device == "cpu":
        return (f"`/train start steps:10`: a first run of a few minutes on this CPU, to see the whole path; "
                f"then `/train start` for the **{preset}** preset's full run")
    return f"`/train start`: the **{preset}** preset above"


def cv_plan(kind: str, count: int, trials: int | None = None) -> str | None:
    """How quick tries will score settings on a set this small (``trainer.folds``), or None."""
    folds = folds_for(count)
    if count < kinds.get(kind).min_examples or not folds:
        return None
    unit = TARGETS[kind][2]
    tries = (f" ({cv_trials(trials, folds)} settings x {folds} short runs, about the steps of {trials} tries)"
             if trials else "")
    return (f"With {count} {unit} (under {FOLDS_BELOW}), quick tries score each setting by {folds}-fold "
            f"cross-validation{tries}: the few {unit} one validation split holds out would be too noisy to "
            f"choose by. The chosen "
            f"setting then trains on all {count}.")


def scores_line(metrics: dict) -> str | None:
    """The scores a finished run's samples got (``trainer.scores``), in words; None before a run
    reported any. A run that makes images without a scoring model says the scores are unavailable."""
    parts = []
    if "score_heldout_ppl" in metrics:
        parts.append(f"held-out perplexity {metrics['score_heldout_ppl']:.2f}")
    if "score_copied_words" in metrics:
        parts.append(f"longest run copied from the training text {metrics['score_copied_words']} words")
    if "score_distinct_2" in metrics:
        parts.append(f"distinct word pairs {metrics['score_distinct_2']:.0%}")
    if "score_likeness" in metrics:
        parts.append(f"likeness to your held-out images {metrics['score_likeness']:.2f} (cosine, 1 = same)")
    if "score_adherence" in metrics:
        parts.append(f"prompt adherence {metrics['score_adherence']:.1f} (CLIP score)")
    if parts:
        return "**Scores:** " + " · ".join(parts)
    if metrics.get("scores_unavailable") or (metrics and kinds.recorded(metrics.get("kind")).makes_images):
        return "**Scores:** unavailable: no scoring model is on the worker's machine."
    return None


def cv_line(metrics: dict) -> str | None:
    """How sure a cross-validated quick-tries job's choice is, from its metrics
    (``storage.jobkinds.tune.cv_metrics``); None for a search on one validation split."""
    if not metrics.get("cv_folds"):
        return None
    folds, n = metrics["cv_folds"], metrics.get("cv_examples")
    line = (f"Settings chosen by {folds}-fold cross-validation" + (f" over {n} examples" if n else "") +
            f": validation loss {metrics['cv_best_mean']:.3f} ± {metrics['cv_best_sd']:.3f} (mean ± sd over the folds)")
    if metrics.get("cv_runner_mean") is not None:
        line += f" against {metrics['cv_runner_mean']:.3f} ± {metrics.get('cv_runner_sd', 0):.3f} for the runner-up"
        runner_folds = metrics.get("cv_runner_folds")
        if runner_folds and runner_folds < folds:
            line += f" (stopped after {runner_folds} of the folds, clearly behind)"
        line += (": a clear choice" if metrics.get("cv_clear") else
                 ": within the folds' spread, so a close call (your votes on the samples can settle it)")
    steps = metrics.get("cv_steps")
    return line + (f". The final run trained on every example for {steps} steps." if steps else ".")


CAPTION_SOURCES = {"description": "descriptions (alt text)", "caption": "the upload's caption",
                   "sidecar": "sidecar .txt files", "metadata": "metadata.jsonl"}


def size_line(sizes) -> str:
    """What an image run will train at and roughly how long a step takes there (``bot.services.sizes``)."""
    where = "a GPU" if sizes.device == "gpu" else "a CPU"
    chosen = ", ".join(k.replace("_", " ") for k in sizes.chosen)
    how = f"{chosen} as set here, the rest sized" if chosen else "sized"
    return (f"**Training size:** {sizes.resolution} px, batch {sizes.batch_size}, {sizes.sample_steps} sampling steps "
            f"({how} for {where} and this {sizes.family.label} base, trained at {sizes.family.native} px); "
            f"a step takes {describe_step_time(sizes.step_s)} there (a rough guess)")


def quantize_line(settings: dict, last_run: dict | None) -> str:
    """How the next run's frozen base loads (``quantize``, as the bot, server or session set it) and what
    the last run picked and why (its metrics), as precision is reported."""
    from trainer.quantize import AUTO_WORDS

    chosen = settings.get("quantize") or "auto"
    line = "**Base quantisation:** " + (AUTO_WORDS if chosen == "auto" else
                                        f"{chosen} (the frozen base loads {chosen}; LoRA and optimizer stay float32)")
    if last_run and last_run.get("quantize"):
        line += f" Last run: {last_run['quantize']}" + (f", {last_run['quantize_reason']}"
                                                       if last_run.get("quantize_reason") else "") + "."
    return line


def report_card(kind: str, items: list[DatasetItem], blobs: BlobStore, members: dict[int, str] | None = None,
                sizes=None, tuned: dict | None = None, settings: dict | None = None,
                posted_files: bool = True, last_run: dict | None = None) -> ReportCard:
    """``sizes`` (``ImageSizing.image_sizes``) is what an image session trains at: the images are read
    against its resolution, as the trainer will read them. ``tuned`` is the metrics of the
    session's latest quick tries, to say how their settings were chosen. ``settings`` are the
    trainer settings runs start from (a declared ``text_kind``, ``neftune_alpha``, ``quantize``);
    ``last_run``: the metrics of the session's latest finished run (what its ``quantize`` picked).
    ``posted_files``: files posted in the session's thread are read (else only ``/data add``)."""
    card = ReportCard(kind)
    few, good, unit = TARGETS[kind]
    if sizes is not None:
        card.lines.append(size_line(sizes))
    card.lines.append(quantize_line(settings or {}, last_run))
    if not items:
        card.count_advice = f"Add {few}+ {unit} with `/data add`" + (" (or drop files in this thread)." if posted_files
                                                                      else ".")
        card.advice.append(card.count_advice)
        card.preset, card.preset_why = pick_preset(kind, 0)
        return card
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for item in items:
            # one folder per item, so that the readers' messages name the file as it was uploaded
            path = Path(folder) / str(item.id) / (item.filename or "file")
            blobs.get_file(item.blob_hash, path)
            paths.append(path)
        try:
            kinds.get(kind).part("card")(card, items, paths, settings or {}, sizes)  # text_card, image_card
        except DataError as exc:
            card.problem = scrub_paths(str(exc), folder)
            card.lines.append(f"❌ The trainer cannot read the data as it is: {card.problem}")
            card.advice.append("Remove the files named above with `/data remove` and upload fixed ones.")
    _grade(card, few, good, unit)
    _balance(card, items, members or {})
    card.preset, card.preset_why = pick_preset(kind, card.count)
    plan, chosen = cv_plan(kind, card.count), cv_line(tuned or {})
    if plan or chosen:
        card.lines.append("**Quick tries:** " + " ".join(filter(None, [plan, f"Last time: {chosen}" if chosen else None])))
    return card


def text_card(card: ReportCard, items: list[DatasetItem], paths: list[Path], settings: dict, sizes=None) -> None:
    """A text dataset's lines: examples, duplicates, lengths, and the augmentation a run would use."""
    from trainer.text.augment import augmentation_plan
    from trainer.text.data import MIN_EXAMPLES, read_text_examples, split_examples
    from trainer.text.kinds import resolve_kind

    examples, report = read_text_examples(paths)
    card.count = report.n_examples
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.kinds.items()))
    card.lines.append(f"**Examples:** {report.n_examples} ({kinds}) from {len(paths)} file(s)")
    card.lines.append(f"**Duplicates dropped:** {report.duplicates_dropped}")
    card.lines.append(f"**Length:** {report.chars_min}–{report.chars_max} characters, median {report.chars_median}")
    # The trainer's own choice (trainer.text.kinds): which augmentations a run uses, which are off, and why.
    # the examples a run trains on after its validation split, which the kind's defaults are keyed to
    n_train = len(split_examples(examples)[0]) if len(examples) >= MIN_EXAMPLES else len(examples)
    # the preset a run would use: the settings' own, else what `/train start` picks for this count
    preset = settings.get("preset")
    if preset in (None, "auto"):
        preset = pick_preset(card.kind, report.n_examples)[0]
    plan = augmentation_plan(resolve_kind(settings.get("text_kind", "auto"), examples),
                             settings.get("neftune_alpha") or 0.0, preset=preset,
                             augment=settings.get("augment"), lora_dropout=settings.get("lora_dropout"),
                             n_train=n_train)
    card.lines.extend(f"**{heading}:** {words}" for heading, words in plan)
    # The count is graded with the session's own targets (``_grade``): the reader's count warning would repeat it.
    card.advice.extend(w[0].upper() + w[1:] for w in report.warnings
                       if not w.startswith(f"only {report.n_examples} examples"))


def image_card(card: ReportCard, items: list[DatasetItem], paths: list[Path], settings: dict, sizes=None) -> None:
    """An image dataset's lines: images, duplicates, sizes against the run's resolution, captions."""
    from trainer.image.data import DataLimits, load_images

    resolution = sizes.resolution if sizes else None
    dataset = load_images(paths, instance_prompt="", limits=DataLimits(min_side=min_image_side(resolution),
                                                                       resolution=resolution))
    report = dataset.report
    card.count = report.images
    card.lines.append(f"**Images:** {report.images} from {len(paths)} file(s)")
    card.lines.append(f"**Duplicates dropped:** {len(report.duplicates)}")
    if report.sizes:
        card.lines.append(f"**Sizes:** shortest side {report.sizes['min_side']} px, longest {report.sizes['max_side']} px")
    if sizes and dataset.examples:
        card.lines.append(bucket_line(dataset.examples, sizes.resolution, sizes.family.part.SIDE_MULTIPLE))
        if resolution and report.sizes["min_side"] < resolution:
            card.advice.append(f"Some images are under {resolution} px on a side, the size this session trains at: "
                               "they are upscaled and train blurrier; use larger originals.")
    sources = Counter(item.checks.get("caption_from") or ("caption" if item.caption else None) for item in items)
    captioned = sum(n for source, n in sources.items() if source)
    by_source = ", ".join(f"{sources[k]} from {words}" for k, words in CAPTION_SOURCES.items() if sources[k])
    card.lines.append(f"**Captions:** {captioned} of {len(items)} images" + (f" ({by_source})" if by_source else ""))
    if captioned < len(items):
        card.advice.append("Caption every image (what is in it besides your subject): add captions with "
                           "`/data add caption:`, or sidecar .txt files or a metadata.jsonl beside the images in a zip.")


def bucket_line(examples: list, resolution: int, multiple: int, shown: int = 3) -> str:
    """'**Buckets** (each image keeps its shape, resized to): 512x512 (1:1): 3 (cat.png, ...); 448x576 (portrait): 2 (...)'."""
    from trainer.image.sizes import bucket_for

    found: dict[tuple[int, int], list[str]] = {}
    for e in examples:
        found.setdefault(bucket_for(e.image.width, e.image.height, resolution, multiple), []).append(
            Path(e.name).name)
    parts = []
    for (w, h), names in sorted(found.items(), key=lambda item: -len(item[1])):
        shape = "square" if w == h else "landscape" if w > h else "portrait"
        listed = ", ".join(names[:shown]) + (f", +{len(names) - shown}" if len(names) > shown else "")
        parts.append(f"{w}x{h} ({shape}): {len(names)} ({listed})")
    return "**Buckets** (each image keeps its shape, resized to): " + "; ".join(parts)


def _grade(card: ReportCard, few: int, good: int, unit: str) -> None:
    if card.count < few:
        card.grade = "not enough yet"
        card.count_advice = f"Add at least {few - card.count} more {unit}: training needs {few}."
    elif card.count < good:
        card.grade = "enough to try"
        card.count_advice = (f"Only {card.count} {unit} in the whole dataset: {good}+ give steadier results; "
                             f"{good - card.count} more would help.")
    else:
        card.grade = "good"
    if card.count_advice:
        card.advice.insert(0, card.count_advice)
    card.lines.insert(0, f"**Grade:** {card.grade} ({card.count} {unit}; {few} needed, {good}+ works well)")


def _balance(card: ReportCard, items: list[DatasetItem], members: dict[int, str]) -> None:
    by_uploader = Counter(item.uploader_id for item in items)
    if len(by_uploader) < 2:
        return
    parts = ", ".join(f"{members.get(uid, f'<@{uid}>')}: {n}" for uid, n in by_uploader.most_common())
    card.lines.append(f"**Contributions:** {parts}")
    top, n = by_uploader.most_common(1)[0]
    if n * 5 >= len(items) * 4:
        card.advice.append("One member uploaded most files: the model will mostly learn their style; "
                           "others could add a few each for balance.")
