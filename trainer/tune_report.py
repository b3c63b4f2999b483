"""What a search leaves in its folder, next to ``study.db`` and ``trials/``::

    OUT/
      trials.csv        one row per trial: number, status, validation loss, steps, seconds, params, note
      trials.json       the same, with each trial's validation curve
      val_loss.png      validation loss over steps, one line per trial (pruned dashed, failed dotted)
      best.json         the best trial: number, validation loss, parameters; on a cross-validated
                        search also ``cv``: folds, the best and runner-up settings' mean and sd over the folds
      top_samples.json  samples of the best ``top_k`` trials, read from their run folders
      best-run/         the best parameters trained once more, in full (a normal run folder)
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from .rundir import write_json_atomic

COLUMNS = ["trial", "status", "val_loss", "steps", "seconds", "params", "note"]


def write_report(result, *, kind: str, top_k: int = 3) -> dict[str, Path]:
    """Write the table, the chart, the best parameters and the top trials' samples."""
    out = result.out
    files = {"table": write_table(out / "trials.csv", result.trials),
             "json": out / "trials.json",
             "chart": plot_trials(out / "val_loss.png", result.trials, best=result.best)}
    write_json_atomic(files["json"], [asdict(row) for row in result.trials])
    if result.best is not None:
        files["best"] = out / "best.json"
        write_json_atomic(files["best"], {"kind": kind, "trial": result.best.number, "val_loss": result.best.val_loss,
                                          "params": result.best.params, "run_dir": result.best.run_dir,
                                          "baseline": result.baseline,
                                          **({"cv": result.cv} if result.cv else {})})
        files["samples"] = out / "top_samples.json"
        write_json_atomic(files["samples"], top_samples(result.trials, top_k))
    return files


def format_cell(column: str, row) -> str:
    """The text of one table cell, shared by the CSV file and the CLI."""
    if column == "trial":
        return str(row.number)
    if column == "val_loss":
        return "" if row.val_loss is None else f"{row.val_loss:.4f}"
    if column == "seconds":
        return "" if row.seconds is None else f"{row.seconds:.1f}"
    if column == "params":
        return " ".join(f"{k}={_short(v)}" for k, v in sorted(row.params.items()))
    return str(getattr(row, column))


def write_table(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([format_cell(c, row) for c in COLUMNS])
    return path


def plot_trials(path: Path, rows, *, best=None) -> Path:
    """Validation loss per trial over steps; pruned trials dashed, failed dotted, the best bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=100)
    style = {"complete": "-", "pruned": "--", "failed": ":", "running": "-.", "waiting": "-."}
    for row in rows:
        points = [(s, v) for s, v in row.curve if v == v and abs(v) != float("inf")]
        if not points:
            continue
        steps, values = zip(*points)
        is_best = best is not None and row.number == best.number
        ax.plot(steps, values, style[row.status], marker="o", markersize=2.5, linewidth=2.4 if is_best else 1.0,
                alpha=1.0 if is_best or row.status == "complete" else 0.6,
                label=f"#{row.number} {row.status}" + (" (best)" if is_best else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss per trial")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def top_samples(rows, k: int) -> list[dict]:
    """Samples of the ``k`` complete trials with the lowest validation loss (text: samples.json;
    image: the sample grids in samples/)."""
    done = sorted((r for r in rows if r.status == "complete" and r.val_loss is not None), key=lambda r: r.val_loss)
    picked = []
    for row in done[:k]:
        folder = Path(row.run_dir or "")
        samples: list = []
        if (folder / "samples.json").exists():
            samples = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
        elif (folder / "samples").is_dir():
            samples = [str(p) for p in sorted((folder / "samples").glob("*.png"))]
        picked.append({"trial": row.number, "val_loss": row.val_loss, "params": row.params, "samples": samples})
    return picked


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
