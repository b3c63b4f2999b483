"""LoRA fine-tuning of a causal language model on a few texts: ``train_text``.

The loop lives in one function, ``_fit``, read top to bottom: each optimizer step takes
``grad_accum`` packed micro-batches, clips, steps, logs; every ``eval_every`` steps it
validates, keeps the best adapter, checkpoints, and checks for early stopping. Everything that
decides *what* to train on (data, defaults, precision) is settled before it starts.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..cancel import CancelToken
from ..errors import Cancelled, ConfigError, TrainingError
from ..events import EventCallback, ProgressEvent
from ..rundir import RunDir, start_run, write_json_atomic
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
    return _fit(_setup(start.config), start.run, start.emit, start.cancel, start.checkpoint)


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


def _setup(config: TextTrainConfig) -> _Setup:
    import torch
    from accelerate.utils import set_seed

    from ..memory import pin_mmap_threshold
    from ..precision import make_accelerator, pick_precision
    from ..models import load_causal_lm, resolve_base
    from .data import load_text_dataset
    from .packing import CHATML_TEMPLATE, encode
    from .presets import size_defaults

    if config.threads:
        torch.set_num_threads(config.threads)
    pin_mmap_threshold()
    dataset = load_text_dataset(config.data, val_fraction=config.val_fraction, seed=config.seed)
    base_path = resolve_base(config.base)
    precision = pick_precision(config.precision)
    accelerator = make_accelerator(precision, gradient_accumulation_steps=config.grad_accum)
    # The frozen base is stored in the compute dtype: half the memory and no per-step casts.
    # LoRA weights stay in float32 (peft upcasts adapters), so updates keep full precision.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    model, tokenizer = load_causal_lm(base_path, dtype=dtype)
    if tokenizer.chat_template is None and any(e.kind == "chat" for e in dataset.train):
        tokenizer.chat_template = CHATML_TEMPLATE
    train_tokens = sum(len(encode(e, tokenizer).ids) for e in dataset.train)
    config = size_defaults(config, n_train=len(dataset.train), train_tokens=train_tokens)
    set_seed(config.seed)
    model = _add_lora(model, config)
    prompts = config.prompts or default_prompts(dataset.val, tokenizer)
    return _Setup(config, dataset, model, tokenizer, accelerator, precision, base_path, prompts)


def _add_lora(model, config: TextTrainConfig):
    from peft import LoraConfig, get_peft_model

    if config.target_modules == "all-linear":
        targets: Any = "all-linear"
    elif config.target_modules:
        targets = [m.strip() for m in config.target_modules.split(",")]
    else:
        targets = TARGET_MODULES.get(model.config.model_type)
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
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
# the loop


def _fit(s: _Setup, run: RunDir, emit: EventCallback, cancel: CancelToken, checkpoint: Path | None) -> TextTrainResult:
    import torch

    from ..checkpoint import load_checkpoint, load_trainable, lr_factor, save_checkpoint, trainable_state
    from ..charts import plot_curves
    from .packing import collate

    cfg, model, acc = s.config, s.model, s.accelerator
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, cfg.steps))
    model, optimizer = acc.prepare(model, optimizer)
    val_rows = _val_rows(s)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "micro": 0, "curves": {"train_loss": [], "val_loss": [], "lr": []},
                             "best_val": None, "best_step": None, "bad_evals": 0, "tokens": 0, "samples_before": None}
    best_weights = None
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, model=acc.unwrap_model(model), optimizer=optimizer, scheduler=scheduler)
        saved.pop("config", None)
        state.update(saved)
        best_path = checkpoint / "best.safetensors"
        if best_path.exists():
            from safetensors.torch import load_file
            best_weights = load_file(str(best_path))
    if state["samples_before"] is None:
        state["samples_before"] = generate(acc.unwrap_model(model), s.tokenizer, s.prompts, cfg.max_new_tokens, cfg.seed)
    stream = _micro_batches(s, state["epoch"], state["micro"])
    # With several processes (accelerate launch), only the main one reports and writes files.
    main = acc.is_main_process
    if not main:
        emit = _ignore
    emit(ProgressEvent("start", state["step"], cfg.steps, message=(
        f"training {cfg.steps} steps on {len(s.dataset.train)} examples ({s.precision}, rank {cfg.rank}, "
        f"lr {cfg.lr:g}, augment {cfg.augment:g})" + (f", resumed at step {state['step']}" if checkpoint else ""))))
    start_time, start_step, session_tokens, stop_reason = time.time(), state["step"], 0, "completed"

    def snapshot(step: int) -> None:
        acc.wait_for_everyone()
        if not main:
            return
        save_checkpoint(run.checkpoint(step), model=acc.unwrap_model(model), optimizer=optimizer,
                        scheduler=scheduler, step=step, extra={k: v for k, v in state.items() if k != "step"}
                        | {"config": cfg.model_dump()}, tensors={"best": best_weights} if best_weights is not None else None)
        run.prune_checkpoints(keep=1)
        emit(ProgressEvent("checkpoint", step, cfg.steps, message=f"checkpoint at step {step}"))

    while state["step"] < cfg.steps:
        # cooperative cancel: keep a checkpoint so the run can resume
        if cancel.is_set():
            snapshot(state["step"])
            emit(ProgressEvent("cancelled", state["step"], cfg.steps, message="cancelled; resume with --resume"))
            if main:
                _write_metrics(s, run, state, status="cancelled", stop_reason="cancelled")
            raise Cancelled(f"run cancelled at step {state['step']}; its checkpoint is kept in {run.checkpoints}")

        # forward/backward over grad_accum packed micro-batches, then clip and step
        model.train()
        step_loss, step_tokens = 0.0, 0
        for _ in range(cfg.grad_accum):
            rows, state["epoch"], state["micro"] = next(stream)
            batch = collate(rows, s.tokenizer.pad_token_id)
            with acc.accumulate(model):
                # The logits (batch x length x vocabulary, the largest tensor of the step) are not
                # kept in a variable: autograd keeps only what backward needs, so they are freed
                # before backward runs instead of living through it.
                with acc.autocast():
                    loss = token_loss(model(input_ids=batch["input_ids"].to(acc.device),
                                            position_ids=batch["position_ids"].to(acc.device), use_cache=False).logits,
                                      batch["labels"].to(acc.device))
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at step {state['step'] + 1}: "
                                        "lower the learning rate (--lr) and try again.")
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.item() / cfg.grad_accum
            step_tokens += batch["real_tokens"]
        scheduler.step()
        state["step"] += 1
        state["tokens"] += step_tokens
        session_tokens += step_tokens
        step = state["step"]

        # log
        lr = scheduler.get_last_lr()[0]
        state["curves"]["train_loss"].append([step, step_loss])
        state["curves"]["lr"].append([step, lr])
        elapsed = time.time() - start_time
        done_here = step - start_step
        emit(ProgressEvent("step", step, cfg.steps, loss=step_loss, lr=lr,
                           tokens_per_s=session_tokens / elapsed if elapsed else None,
                           eta_s=elapsed / done_here * (cfg.steps - step), tokens=state["tokens"]))

        # validate, keep the best adapter, checkpoint, stop early
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = evaluate_rows(model, val_rows, s.tokenizer.pad_token_id, cfg.batch_size, acc)
            state["curves"]["val_loss"].append([step, val])
            improved = state["best_val"] is None or val < state["best_val"] - cfg.min_delta
            if improved:
                state["best_val"], state["best_step"], state["bad_evals"] = val, step, 0
                best_weights = trainable_state(acc.unwrap_model(model))
            else:
                state["bad_evals"] += 1
            emit(ProgressEvent("eval", step, cfg.steps, loss=step_loss, val_loss=val, lr=lr,
                               message=f"validation loss {val:.4f} (perplexity {math.exp(min(val, 50)):.2f})"))
            if step < cfg.steps:
                snapshot(step)
            if cfg.patience and state["bad_evals"] >= cfg.patience:
                stop_reason = "early_stopped"
                emit(ProgressEvent("stopped_early", step, cfg.steps, val_loss=val, message=(
                    f"validation loss has not improved for {cfg.patience} evaluations; "
                    f"keeping the adapter from step {state['best_step']}")))
                break

    # outputs: best adapter, samples after, metrics, chart
    unwrapped = acc.unwrap_model(model)
    if best_weights is not None:
        load_trainable(unwrapped, best_weights)
    acc.wait_for_everyone()
    samples, metrics = [], {}
    if main:
        unwrapped.save_pretrained(run.adapter, safe_serialization=True)
        after = generate(unwrapped, s.tokenizer, s.prompts, cfg.max_new_tokens, cfg.seed)
        samples = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(s.prompts, state["samples_before"], after)]
        write_json_atomic(run.root / "samples.json", samples)
        plot_curves(run.loss_chart, {"train loss": state["curves"]["train_loss"],
                                     "validation loss": state["curves"]["val_loss"]}, title=f"{Path(run.root).name}: loss")
        metrics = _write_metrics(s, run, state, status="done", stop_reason=stop_reason,
                                 train_time_s=time.time() - start_time)
        shutil.rmtree(run.checkpoints, ignore_errors=True)  # a finished run needs no resume point
    best = state["best_val"]
    emit(ProgressEvent("done", state["step"], cfg.steps, val_loss=best, artifacts=["adapter", "samples.json", "loss.png"],
                       message=f"done: best validation loss {best:.4f} at step {state['best_step']}"))
    return TextTrainResult(run.root, state["step"], stop_reason, best, math.exp(min(best, 50)),
                           state["best_step"], samples, metrics)


def _ignore(event: ProgressEvent) -> None:
    """The event callback of processes other than the main one."""


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
        augment = TextAugmenter(cfg.augment, seed=cfg.seed * 100_003 + epoch)
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
    """Sample one continuation per prompt; seeded per prompt, without disturbing training RNG."""
    import torch

    model.eval()
    outputs = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for prompt in prompts:
            torch.manual_seed(seed)
            inputs = tokenizer(prompt, return_tensors="pt").to(device)
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=SAMPLE_TEMPERATURE, top_p=0.95, pad_token_id=tokenizer.pad_token_id)
            outputs.append(tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return outputs


def _write_metrics(s: _Setup, run: RunDir, state: dict, *, status: str, stop_reason: str, **extra) -> dict:
    best = state["best_val"]
    metrics = {
        "kind": "text",
        "status": status,
        "base": s.config.base,
        "base_path": str(s.base_path),
        "precision": s.precision,
        "config": s.config.model_dump(),
        "data_report": s.dataset.report.to_dict(),
        "steps_done": state["step"],
        "stop_reason": stop_reason,
        "best_step": state["best_step"],
        "best_val_loss": best,
        "val_perplexity": math.exp(min(best, 50)) if best is not None else None,
        "tokens_trained": state["tokens"],
        "curves": state["curves"],
        "prompts": s.prompts,
        **extra,
    }
    run.write_metrics(metrics)
    return metrics
