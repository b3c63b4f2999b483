"""The training loop of every run, text or image: ``fit(task, start)``.

``fit`` is the skeleton a single-file training script would have, read top to bottom:
resume, then per step: cancel? -> the kind's step -> log -> samples -> validate, keep the best
adapter, stop early -> checkpoint; then the outputs. What differs between kinds lives in a
``Task`` (``TextTask`` in ``trainer/text/train.py``, ``ImageTask`` in ``trainer/image/train.py``),
whose ``train_step`` holds the whole forward/backward/clip/step of one optimizer step inline.

Several processes (``accelerate launch``): every process runs this loop on its own share of
each step's batch (the task shards it); only the main process emits events and writes files,
and the decisions that end the loop (cancel, divergence, early stopping) are taken from
numbers all processes agree on, so no process waits on a collective the others never reach.

A new kind of run is a ``Task`` subclass and a ``train_<kind>`` function calling ``fit``;
see docs/trainer.md for where a new model family or augmentation goes.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import Cancelled, TrainingError
from .events import ProgressEvent
from .rundir import RunDir, RunStart


class Task:
    """What one kind of run supplies to ``fit``. Subclasses set the attributes in ``__init__``.

    ``config`` has ``steps``, ``eval_every``, ``patience`` and ``min_delta`` (``sample_every``
    too where the kind draws samples during training). ``model`` holds the trainable (LoRA)
    parameters: they are what checkpoints and the best-adapter copy save, under the names
    ``model.named_parameters()`` gives, so it is the unwrapped module, never a DDP wrapper.
    ``generator`` is the kind's own ``torch.Generator`` (batches, noise), saved in checkpoints.
    """

    config: Any
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    generator: Any = None

    def describe(self) -> str:
        """One line for the start event: what is trained on what."""
        raise NotImplementedError

    def train_step(self) -> tuple[float, int | None]:
        """One optimizer step on this process's share of the batch: (its loss, tokens or None)."""
        raise NotImplementedError

    def evaluate(self) -> float | None:
        """Validation loss, the same number on every process; None without held-out data."""
        return None

    def eval_message(self, val: float) -> str:
        return f"validation loss {val:.4f}"

    def before_training(self) -> None:
        """Main process, fresh runs only: anything to record before the first step."""

    def sample(self, name: str) -> str | None:
        """Main process: draw samples now; returns the file written (relative to the run folder)."""
        return None

    def sample_shows(self) -> dict | None:
        """What ``sample`` draws, for whoever posts it: ``{"prompts": rows, "seeds": columns}``."""
        return None

    def state_dict(self) -> dict:
        """JSON-able state beyond weights, optimizer and RNG (where the data stream is)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def finish(self, run: RunDir, state: "LoopState") -> tuple[list[str], dict]:
        """Main process, after the best weights are back: write the adapter (and text samples).

        Returns the files written (relative to the run folder) and extra metrics.
        """
        raise NotImplementedError

    def metrics(self, state: "LoopState") -> dict:
        """What metrics.json says about this kind of run (kind, base, data report, ...)."""
        raise NotImplementedError


def training_mode(*modules) -> None:
    """Put modules in training mode only where something switched them out of it.

    ``Module.train()`` walks every submodule, and peft's LoRA layers make that walk slow: on an
    SD 1.x-shaped UNet it took about 28 ms, most of a small model's step. Evaluation and
    sampling switch a module to eval and back (or leave its top-level flag off), so the
    top-level flag says whether the walk is needed.
    """
    for module in modules:
        if not module.training:
            module.train()


def adamw(params, **kwargs):
    """torch's AdamW with its fused kernel (one pass over all LoRA tensors) where the device has one."""
    import torch

    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, **kwargs)


def lora_optimizer(model, params: list, *, lr: float, weight_decay: float, loraplus_ratio: float):
    """The run's AdamW over ``params`` (``model``'s trainable weights). With ``loraplus_ratio`` above 1,
    LoRA+ (peft's ``create_loraplus_optimizer``): the B matrices (and DoRA's magnitudes) learn at
    ``loraplus_ratio`` times ``lr``, the A matrices at ``lr``; the schedule scales every group alike.
    A LoRA on an embedding layer keeps ``lr`` (peft's own default for it is 1e-6)."""
    if loraplus_ratio == 1:
        return adamw(params, lr=lr, weight_decay=weight_decay)
    from peft.optimizers import create_loraplus_optimizer

    optimizer = create_loraplus_optimizer(model, adamw, lr=lr, loraplus_lr_ratio=loraplus_ratio,
                                          loraplus_lr_embedding=lr, loraplus_weight_decay=weight_decay,
                                          weight_decay=weight_decay)
    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert grouped == {id(p) for p in params}, "LoRA+ groups must hold exactly the run's trainable weights"
    return optimizer


@dataclass
class LoopState:
    """Everything the loop itself knows; saved in each checkpoint's state.json."""

    step: int = 0
    tokens: int = 0
    curves: dict[str, list] = field(default_factory=lambda: {"train_loss": [], "val_loss": [], "lr": []})
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    samples: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """What ``fit`` hands back to the kind's ``train_<kind>``."""

    state: LoopState
    stop_reason: str  # "completed", "early_stopped"
    metrics: dict  # as written to metrics.json (empty on other processes than the main one)
    artifacts: list[str]


def fit(task: Task, start: RunStart) -> Outcome:
    """Train ``task`` in ``start.run`` to the end (or an early stop); raise ``Cancelled`` on cancel."""
    return _Fit(task, start)()


class _Fit:
    """One run of the loop: its state, and each thing ``fit`` does in turn (resume or begin, the
    steps with their samples, validations and checkpoints, then the outputs)."""

    def __init__(self, task: Task, start: RunStart):
        self.task, self.start = task, start
        self.cfg, self.acc, self.run = task.config, task.accelerator, start.run
        self.main = self.acc.is_main_process
        self.emit = start.emit if self.main else _ignore  # several processes: only the main one reports
        self.state, self.best_weights, self.stop_reason = LoopState(), None, "completed"
        self.started, self.start_step, self.session_tokens = 0.0, 0, 0

    def __call__(self) -> Outcome:
        cfg = self.cfg
        self.resume_or_begin()
        self.started, self.start_step = time.time(), self.state.step
        sample_every = getattr(cfg, "sample_every", 0) or 0
        while self.state.step < cfg.steps:
            self.cancel_if_asked()
            loss, lr = self.train_step()
            step = self.state.step
            # samples every N steps (the final ones are drawn with the outputs)
            if self.main and sample_every and step % sample_every == 0 and step < cfg.steps:
                self.draw(f"step-{step:06d}")
            if (step % cfg.eval_every == 0 or step == cfg.steps) and self.validate(loss, lr):
                break  # stopped early
            if step % cfg.eval_every == 0 and step < cfg.steps:  # a finished run needs no checkpoint
                self.checkpoint(step)
        return self.finish(time.time() - self.started)

    def resume_or_begin(self) -> None:
        """Resume: weights, optimizer, scheduler, RNGs, the loop's and the task's state; else begin."""
        from .checkpoint import load_checkpoint

        task, start = self.task, self.start
        if start.checkpoint is not None:
            saved = load_checkpoint(start.checkpoint, model=task.model, optimizer=task.optimizer,
                                    scheduler=task.scheduler, generator=task.generator)
            task.load_state_dict(saved.get("task", saved))
            self.state = LoopState(**{k: v for k, v in saved.items() if k in LoopState.__dataclass_fields__})
            if (start.checkpoint / "best.safetensors").exists():
                from safetensors.torch import load_file
                self.best_weights = load_file(str(start.checkpoint / "best.safetensors"))
        elif self.main:
            task.before_training()
        self.emit(ProgressEvent("start", self.state.step, self.cfg.steps, message=task.describe() + (
            f", resumed at step {self.state.step}" if start.checkpoint else "")))

    def cancel_if_asked(self) -> None:
        """Cooperative cancel, decided by all processes together: keep a checkpoint so the run can resume."""
        state, steps = self.state, self.cfg.steps
        if _any_process(self.acc, self.start.cancel.is_set()):
            self.checkpoint(state.step)
            self.emit(ProgressEvent("cancelled", state.step, steps, message="cancelled; resume with --resume"))
            if self.main:
                self.write_metrics("cancelled", "cancelled")
            raise Cancelled(f"run cancelled at step {state.step}; its checkpoint is kept in {self.run.checkpoints}")

    def train_step(self) -> tuple[float, float]:
        """One optimizer step of the kind (forward, backward, clip, step), the schedule, and its log."""
        task, state, steps = self.task, self.state, self.cfg.steps
        loss, tokens = task.train_step()
        task.scheduler.step()
        loss, tokens = _across_processes(self.acc, loss, tokens)
        if not math.isfinite(loss):
            raise TrainingError(f"loss became {loss} at step {state.step + 1}: "
                                "lower the learning rate (--lr) and try again.")
        state.step += 1
        step = state.step
        lr = task.scheduler.get_last_lr()[0]
        state.curves["train_loss"].append([step, loss])
        state.curves["lr"].append([step, lr])
        elapsed = time.time() - self.started
        if tokens is not None:
            state.tokens += tokens
            self.session_tokens += tokens
        self.emit(ProgressEvent("step", step, steps, loss=loss, lr=lr,
                                tokens_per_s=self.session_tokens / elapsed if tokens is not None and elapsed else None,
                                eta_s=elapsed / (step - self.start_step) * (steps - step),
                                tokens=state.tokens if tokens is not None else None))
        return loss, lr

    def validate(self, loss: float, lr: float) -> bool:
        """Validate, keep the best adapter; True when the run should stop early."""
        from .checkpoint import trainable_state

        cfg, state, step = self.cfg, self.state, self.state.step
        val = self.task.evaluate()
        if val is None:
            return False
        state.curves["val_loss"].append([step, val])
        if state.best_val is None or val < state.best_val - cfg.min_delta:
            state.best_val, state.best_step, state.bad_evals = val, step, 0
            self.best_weights = trainable_state(self.task.model)
        else:
            state.bad_evals += 1
        self.emit(ProgressEvent("eval", step, cfg.steps, loss=loss, val_loss=val, lr=lr,
                                message=self.task.eval_message(val)))
        if not (cfg.patience and state.bad_evals >= cfg.patience):
            return False
        self.stop_reason = "early_stopped"
        self.emit(ProgressEvent("stopped_early", step, cfg.steps, val_loss=val, message=(
            f"validation loss has not improved for {cfg.patience} evaluations; "
            f"keeping the adapter from step {state.best_step}")))
        return True

    def checkpoint(self, step: int) -> None:
        from .checkpoint import save_checkpoint

        task, state = self.task, self.state
        self.acc.wait_for_everyone()
        if self.main:
            extra = asdict(state) | {"task": task.state_dict(), "config": self.cfg.model_dump()}
            extra.pop("step")
            save_checkpoint(self.run.checkpoint(step), model=task.model, optimizer=task.optimizer,
                            scheduler=task.scheduler, step=step, generator=task.generator, extra=extra,
                            tensors={"best": self.best_weights} if self.best_weights is not None else None)
            self.run.prune_checkpoints(keep=1)
            self.emit(ProgressEvent("checkpoint", step, self.cfg.steps, message=f"checkpoint at step {step}"))

    def write_metrics(self, status: str, stop_reason: str, **extra) -> dict:
        state = self.state
        metrics = {**self.task.metrics(state), "status": status, "config": self.cfg.model_dump(),
                   "steps_done": state.step, "stop_reason": stop_reason, "best_step": state.best_step,
                   "best_val_loss": state.best_val, "curves": state.curves, "processes": self.acc.num_processes,
                   **extra}
        self.run.write_metrics(metrics)
        return metrics

    def draw(self, name: str, scores: dict | None = None) -> str | None:
        drawn = self.task.sample(name)
        if drawn:
            self.state.samples.append(drawn)
            self.emit(ProgressEvent("sample", self.state.step, self.cfg.steps, artifacts=[drawn],
                                    message=f"samples: {drawn}", shows=self.task.sample_shows(), scores=scores))
        return drawn

    def finish(self, train_s: float) -> Outcome:
        """Outputs, main process only: best adapter, final samples, chart, metrics, the adapter's card."""
        from .card import write_card
        from .charts import plot_curves
        from .checkpoint import load_trainable
        from .scores import chart_lines, only_scores

        state, run = self.state, self.run
        if self.best_weights is not None:
            load_trainable(self.task.model, self.best_weights)
        self.acc.wait_for_everyone()
        artifacts, metrics = [], {}
        if self.main:
            artifacts, extra = self.task.finish(run, state)
            final = self.draw("final", only_scores(extra) or None)  # the kind scored these very samples
            artifacts += [final] if final else []
            plot_curves(run.loss_chart, {"train loss": state.curves["train_loss"],
                                         "validation loss": state.curves["val_loss"]},
                        title=f"{Path(run.root).name}: loss", notes=chart_lines(only_scores(extra)))
            artifacts.append(run.loss_chart.name)
            steps_here = state.step - self.start_step
            metrics = self.write_metrics("done", self.stop_reason, train_time_s=train_s,
                                         steps_per_s=steps_here / train_s if train_s > 0 else None, **extra)
            # the adapter's card, from those metrics: the folder leaves the machine (export zip, Hub)
            # naming its base as others load it, never by a path of this host
            write_card(run)
            shutil.rmtree(run.checkpoints, ignore_errors=True)  # a finished run needs no resume point
        best = state.best_val
        self.emit(ProgressEvent("done", state.step, self.cfg.steps, val_loss=best, artifacts=artifacts,
                                message="done" + (f": best validation loss {best:.4f} at step {state.best_step}"
                                                  if best is not None else "")))
        return Outcome(state, self.stop_reason, metrics, artifacts)


def _ignore(event: ProgressEvent) -> None:
    """The event callback of processes other than the main one."""


def _any_process(acc, flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a cancel file may appear between checks)."""
    if acc.num_processes == 1:
        return flag
    import torch

    return bool(acc.reduce(torch.tensor([float(flag)], device=acc.device), reduction="sum").item())


def _across_processes(acc, loss, tokens: int | None) -> tuple[float, int | None]:
    """The step's loss averaged and its tokens summed over processes, as plain numbers."""
    if acc.num_processes == 1:
        return float(loss), tokens
    import torch

    both = torch.tensor([float(loss), float(tokens or 0)], device=acc.device)
    loss_sum, token_sum = acc.reduce(both, reduction="sum").tolist()
    return loss_sum / acc.num_processes, int(token_sum) if tokens is not None else None
