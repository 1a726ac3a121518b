"""Learning-curve plot of a training run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_learning_curves(logs: dict[str, list[float]], phases: dict[str, int], path: Path) -> Path:
    """Loss and accuracy per epoch, train and validation; dashed lines mark phase starts."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = logs.get(prefix + metric)
            if values:
                epochs = range(1, len(values) + 1)
                axis.plot(epochs, values, style, label=f"{'validation' if prefix else 'train'}")
        for phase, start in phases.items():
            if start > 0:
                axis.axvline(start + 0.5, color="grey", linestyle=":", label=f"start of {phase}")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
