"""LoRA fine-tuning of a causal language model on a few texts: ``train_text``.

``_setup`` settles everything that decides *what* to train on (data, defaults, model,
precision); ``TextTask.train_step`` is one optimizer step (``grad_accum`` packed micro-batches,
clip, step), and the shared loop in ``trainer/loop.py`` runs it: logging, validation, the best
adapter, checkpoints, early stopping, cancel and the outputs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..cancel import CancelToken
from ..errors import ConfigError
from ..events import EventCallback
from ..kinds import TEXT
from ..loop import LoopState, Task, fit, lora_optimizer, training_mode
from ..rundir import RunDir, start_run, write_json_atomic
from ..scores import content, each_text_scores, text_scores
from .config import TextTrainConfig

# Attention projections per architecture; anything else falls back to peft's own defaults.
TARGET_MODULES = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "falcon": ["query_key_value", "dense"],
}
SAMPLE_TEMPERATURE = 0.8


@dataclass
class TextTrainResult:
    """What a finished run reports; everything here is also in ``RUN/metrics.json``."""

    run_dir: Path
    steps_done: int
    stop_reason: str  # "completed", "early_stopped"
    val_loss: float | None
    val_perplexity: float | None
    best_step: int | None
    samples: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def train_text(config: TextTrainConfig, on_event: EventCallback | None = None,
               cancel: CancelToken | None = None) -> TextTrainResult:
    """Train a LoRA adapter as ``config`` says and write the run folder.

    Raises ``DataError``/``ModelError``/``ConfigError`` for bad input before any training,
    and ``Cancelled`` (after writing a checkpoint) when ``cancel`` is set mid-run.
    """
    start = start_run(config, on_event, cancel)
    task = TextTask(_setup(start.config))
    out = fit(task, start)
    best = out.state.best_val
    return TextTrainResult(start.run.root, out.state.step, out.stop_reason, best,
                           math.exp(min(best, 50)) if best is not None else None, out.state.best_step,
                           task.samples, out.metrics)


# --------------------------------------------------------------------------------------------
# setup: data, defaults, model, precision


@dataclass
class _Setup:
    config: TextTrainConfig  # with every None knob filled in
    dataset: Any
    model: Any
    tokenizer: Any
    accelerator: Any
    precision: str
    base_path: Path
    prompts: list[str]
    precision_choice: dict = field(default_factory=dict)  # what auto picked and why
    quantize: Any = None  # trainer.quantize.QuantizeChoice: the frozen base's quantisation, and why
    text_kind: Any = None  # trainer.text.kinds.TextKind: what the augmentation follows, and why
    regularisation_off: str | None = None  # why the preset left augmentation and dropout off for this kind


def _setup(config: TextTrainConfig) -> _Setup:
    import torch
    from accelerate.utils import set_seed

    from ..memory import pin_mmap_threshold
    from ..models import load_causal_lm, resolve_base
    from ..precision import choose_precision, compute_dtype, make_accelerator, model_key, text_probe
    from ..presets import regularisation_off
    from ..quantize import check_quantize, decide, run_device, text_config
    from .data import load_text_dataset
    from .kinds import resolve_kind
    from .packing import CHATML_TEMPLATE, encode
    from .presets import size_defaults

    if config.threads:
        torch.set_num_threads(config.threads)
    pin_mmap_threshold()
    check_quantize(config.quantize, TEXT.name, run_device())  # before any work: what this machine lacks
    dataset = load_text_dataset(config.data, val_fraction=config.val_fraction, seed=config.seed,
                                holdout=config.holdout)
    # Every example, held-out ones too, so that every fold of a cross-validated try agrees.
    text_kind = resolve_kind(config.text_kind, dataset.train + dataset.val)
    base_path = resolve_base(config.base)
    shape = dict(seq_len=config.seq_len or 256, batch_size=config.batch_size or 4, rank=config.rank or 8)
    probe = text_probe(base_path, **shape)
    choice = choose_precision(config.precision, probe=probe,
                              key=f"text|{model_key(base_path)}|" + ",".join(f"{k}={v}" for k, v in shape.items()))
    precision = choice.precision
    accelerator = make_accelerator(precision, gradient_accumulation_steps=config.grad_accum)
    # The frozen base is stored in the compute dtype: half the memory and no per-step casts.
    # LoRA weights stay in float32 (peft upcasts adapters), so updates keep full precision.
    dtype = compute_dtype(precision)
    # A quantised base (QLoRA) computes in the same dtype; only its frozen linear weights shrink.
    quantize = decide(config.quantize, kind=TEXT.name, folder=base_path, precision=precision)
    model, tokenizer = load_causal_lm(base_path, dtype=dtype, quantization_config=text_config(quantize.mode, dtype),
                                      device=accelerator.device)
    if tokenizer.chat_template is None and any(e.kind == "chat" for e in dataset.train):
        tokenizer.chat_template = CHATML_TEMPLATE
    train_tokens = sum(len(encode(e, tokenizer).ids) for e in dataset.train)
    # Where the preset switched augmentation and dropout off for this kind of text, and why (metrics.json).
    off = (regularisation_off(text_kind.kind, config.preset, len(dataset.train))
           if None in (config.augment, config.lora_dropout) else None)
    config = size_defaults(config, n_train=len(dataset.train), train_tokens=train_tokens, text_kind=text_kind.kind)
    set_seed(config.seed)
    model = _add_lora(model, config)
    prompts = config.prompts or default_prompts(dataset.val or dataset.train, tokenizer)
    return _Setup(config, dataset, model, tokenizer, accelerator, precision, base_path, prompts, choice.as_dict(),
                  quantize, text_kind, off)



def _add_lora(model, config: TextTrainConfig):
    from peft import LoraConfig, get_peft_model

    if config.target_modules == "all-linear":
        targets: Any = "all-linear"
    elif config.target_modules:
        targets = [m.strip() for m in config.target_modules.split(",")]
    else:
        targets = TARGET_MODULES.get(model.config.model_type)
    # use_dora: peft's DoRA, a trained magnitude per output feature beside A and B (saved with them)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none", use_dora=config.dora)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"LoRA cannot target {targets!r} on this model: {exc}") from exc


def default_prompts(examples, tokenizer, n: int = 3, words: int = 8) -> list[str]:
    """Prompts drawn from held-out examples: their prompt, or the opening words of a text."""
    from .packing import CHATML_TEMPLATE

    prompts = []
    for example in examples[:n]:
        if example.kind == "completion":
            prompts.append(example.prompt)
        elif example.kind == "chat":
            last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
            prompts.append(tokenizer.apply_chat_template(
                example.messages[:last], tokenize=False, add_generation_prompt=True,
                chat_template=tokenizer.chat_template or CHATML_TEMPLATE))
        else:
            prompts.append(" ".join(example.text.split()[:words]))
    return prompts


# --------------------------------------------------------------------------------------------
# the step: what trainer/loop.py's ``fit`` runs for a text run


class TextTask(Task):
    """A causal LM's LoRA trained on packed token rows; ``train_step`` is one optimizer step."""

    def __init__(self, s: _Setup):
        from ..checkpoint import lr_schedule

        cfg = s.config
        self.s, self.config, self.accelerator = s, cfg, s.accelerator
        self.params = [p for p in s.model.parameters() if p.requires_grad]
        optimizer = lora_optimizer(s.model, self.params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   loraplus_ratio=cfg.loraplus_ratio)
        self.scheduler = lr_schedule(optimizer, cfg)
        # Under accelerate launch, `wrapped` syncs gradients between processes (DDP); `model` is
        # the module itself, whose LoRA weights checkpoints save and evaluation and sampling use.
        self.wrapped, self.optimizer = s.accelerator.prepare(s.model, optimizer)
        self.model = s.accelerator.unwrap_model(self.wrapped)
        # Validation rows are shared out between processes; evaluate_rows sums their losses.
        self.val_rows = _val_rows(s)[s.accelerator.process_index::s.accelerator.num_processes]
        self.epoch, self.micro, self.stream = 0, 0, None
        self.samples_before: list[str] = []
        self.samples: list[dict] = []

    def describe(self) -> str:
        cfg = self.config
        return (f"training {cfg.steps} steps on {len(self.s.dataset.train)} examples ({self.s.precision}, "
                f"{self.s.quantize.words()}: {self.s.quantize.reason}, "
                f"rank {cfg.rank}, lr {cfg.lr:g}, augment {cfg.augment:g} for {self.s.text_kind.kind}"
                + (f", LoRA dropout {cfg.lora_dropout:g}")
                + (" (the preset leaves augmentation and dropout off for this kind of text at this size: "
                   "docs/presets.md)" if self.s.regularisation_off else "")
                + (f", NEFTune alpha {cfg.neftune_alpha:g}" if cfg.neftune_alpha else "") + ")")

    def before_training(self) -> None:
        # The base's own samples: the LoRA is switched off rather than run at its start, where its
        # B is zero and adds exactly nothing. The same text in about 9/10 of the time (smollm2-135m,
        # 3 prompts of 48 tokens on 2 CPU cores: 10.4 against 11.7 s), and these samples are an
        # eighth of a short run (docs/benchmarks.md, close to the floor).
        with self.model.disable_adapter():
            self.samples_before = generate(self.model, self.s.tokenizer, self.s.prompts, self.config.max_new_tokens,
                                           self.config.seed)

    def train_step(self) -> tuple[float, int]:
        """grad_accum packed micro-batches: forward, backward (gradients synced on the last), clip, step."""
        from .augment import noisy_embeddings
        from .packing import collate

        cfg, acc, model = self.config, self.accelerator, self.wrapped
        if self.stream is None:  # started here so that a resume picks up where the data stream was
            self.stream = _micro_batches(self.s, self.epoch, self.micro)
        training_mode(model, self.model)
        step_loss, step_tokens = 0.0, 0
        # NEFTune's hook is on the embeddings for this step only: evaluation, samples and export never see it.
        with noisy_embeddings(self.model, cfg.neftune_alpha):
            for _ in range(cfg.grad_accum):
                rows, self.epoch, self.micro = next(self.stream)
                batch = collate(rows, self.s.tokenizer.pad_token_id)
                with acc.accumulate(model):
                    # The logits (batch x length x vocabulary, the largest tensor of the step) are not
                    # kept in a variable: autograd keeps only what backward needs, so they are freed
                    # before backward runs instead of living through it.
                    with acc.autocast():
                        loss = token_loss(model(input_ids=batch["input_ids"].to(acc.device),
                                                position_ids=batch["position_ids"].to(acc.device),
                                                use_cache=False).logits,
                                          batch["labels"].to(acc.device))
                    acc.backward(loss)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_loss += loss.item() / cfg.grad_accum
                step_tokens += batch["real_tokens"]
        return step_loss, step_tokens

    def evaluate(self) -> float | None:
        if not self.s.dataset.val:
            return None  # holdout "none": every example trains
        return evaluate_rows(self.model, self.val_rows, self.s.tokenizer.pad_token_id, self.config.batch_size,
                             self.accelerator)

    def eval_message(self, val: float) -> str:
        return f"validation loss {val:.4f} (perplexity {math.exp(min(val, 50)):.2f})"

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "micro": self.micro, "samples_before": self.samples_before}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.micro = state["epoch"], state["micro"]
        self.samples_before = state.get("samples_before") or []

    def finish(self, run: RunDir, state: LoopState) -> tuple[list[str], dict]:
        s = self.s
        self.model.save_pretrained(run.adapter, safe_serialization=True)
        after = generate(self.model, s.tokenizer, s.prompts, self.config.max_new_tokens, self.config.seed)
        # scores beside the samples (trainer.scores): no extra model is needed for text
        training = [content(e) for e in s.dataset.train]
        each = each_text_scores(after, training, state.best_val)
        self.samples = [{"prompt": p, "before": b, "after": a, "scores": sc}
                        for p, b, a, sc in zip(s.prompts, self.samples_before, after, each)]
        write_json_atomic(run.root / "samples.json", self.samples)
        scores = text_scores(after, training, state.best_val)
        return ["adapter", "samples.json"], scores

    def metrics(self, state: LoopState) -> dict:
        s, best = self.s, state.best_val
        return {"kind": TEXT.name, "base": s.config.base, "base_path": str(s.base_path), "precision": s.precision,
                "precision_choice": s.precision_choice, "quantize": s.quantize.mode,
                # the reason again as a plain string: the worker hands the bot metrics.json's scalars only
                "quantize_reason": s.quantize.reason,
                "quantize_choice": s.quantize.as_dict(), "text_kind": s.text_kind.kind,
                "text_kind_reason": s.text_kind.reason, "text_kind_declared": s.text_kind.declared,
                "regularisation_off_for_kind": s.regularisation_off,
                "data_report": s.dataset.report.to_dict(), "tokens_trained": state.tokens, "prompts": s.prompts,
                "val_perplexity": math.exp(min(best, 50)) if best is not None else None}


def token_loss(logits, labels, reduction: str = "mean"):
    """Next-token cross-entropy over labelled tokens, computed in float32.

    The labels are shifted rather than the logits: slicing the logits would copy the largest
    tensor of the step (batch x length x vocabulary) once more, and its gradient with it.
    """
    import torch.nn.functional as F

    from .packing import IGNORE

    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction=reduction)


def _micro_batches(s: _Setup, epoch: int, micro: int) -> Iterator[tuple[list, int, int]]:
    """Yield (rows, epoch, next micro index) forever, starting at (epoch, micro).

    Each epoch's rows depend only on (seed, epoch): augmentation and shuffling draw from their
    own seeded generators, so a resumed run sees exactly the batches it would have seen.
    """
    from .augment import TextAugmenter
    from .packing import encode, pack

    cfg = s.config
    per_step = cfg.batch_size * s.accelerator.num_processes
    while True:
        augment = TextAugmenter(cfg.augment, seed=cfg.seed * 100_003 + epoch, kind=s.text_kind.kind)
        pieces = [encode(augment(e) if cfg.augment else e, s.tokenizer) for e in s.dataset.train]
        rows = pack(pieces, cfg.seq_len, random.Random(cfg.seed * 7_919 + epoch))
        batches = [rows[i:i + per_step] for i in range(0, len(rows), per_step)]
        for index in range(micro, len(batches)):
            mine = batches[index][s.accelerator.process_index::s.accelerator.num_processes] or batches[index][:1]
            yield mine, epoch, index + 1
        epoch, micro = epoch + 1, 0


def _val_rows(s: _Setup) -> list:
    from .packing import encode, pack

    return pack([encode(e, s.tokenizer) for e in s.dataset.val], s.config.seq_len)


def evaluate_rows(model, rows, pad_id: int, batch_size: int, accelerator=None) -> float:
    """Mean loss per labelled token over packed rows (deterministic: eval mode, no augmentation)."""
    import torch

    from .packing import IGNORE, collate

    model.eval()
    total, count = 0.0, 0
    device = accelerator.device if accelerator else next(model.parameters()).device
    autocast = accelerator.autocast() if accelerator else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i:i + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                           use_cache=False).logits
            labels = batch["labels"].to(device)
            total += token_loss(logits, labels, reduction="sum").item()
            count += int((labels[:, 1:] != IGNORE).sum())
    if accelerator is not None and accelerator.num_processes > 1:
        totals = accelerator.reduce(torch.tensor([total, count], device=device), reduction="sum")
        total, count = totals.tolist()
    return total / max(count, 1)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int) -> list[str]:
    """Sample one continuation per prompt, all prompts in one batch (left-padded), seeded once per
    call without disturbing training RNG: the same prompts and seed give the same texts. On 2 CPU
    cores 3 prompts in one batch took 1.05x-2.5x less time than one at a time (bench/sample_batch.py,
    docs/benchmarks.md)."""
    import torch

    if not prompts:
        return []
    model.eval()
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # continuations all start at the batch's end
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = side
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=SAMPLE_TEMPERATURE,
                             top_p=0.95, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
