"""Charts written as PNG files into run folders (matplotlib, no screen needed)."""

from __future__ import annotations

from pathlib import Path


def plot_curves(path: str | Path, curves: dict[str, list[tuple[int, float]]], title: str,
                ylabel: str = "loss", notes: list[str] | None = None) -> Path:
    """Draw one line per named curve of ``(step, value)`` points and save it as a PNG.

    ``notes`` (the final samples' scores) go in a box in the corner and, one per line, into the
    PNG's ``Scores`` text field, so that what the chart says can be read back without its pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for name, points in curves.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="o" if len(points) < 30 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(curves.values()):
        ax.legend(loc="upper right")
    if notes:
        ax.text(0.02, 0.03, "final samples: " + "\n".join(notes), transform=ax.transAxes, fontsize=7,
                va="bottom", bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, metadata={"Scores": "\n".join(notes)} if notes else None)
    plt.close(fig)
    return path
