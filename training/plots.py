"""Plots: learning curves, reliability diagrams, abstention curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

from models.uncertainty import expected_calibration_error, reliability

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
    return _save(figure, path)


def plot_reliability(probabilities: np.ndarray, labels: np.ndarray, title: str, path: Path) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with ECE."""
    hits, confidence, counts = reliability(probabilities, labels)
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.bar(edges[:-1], np.nan_to_num(hits), width=np.diff(edges), align="edge",
             edgecolor="black", alpha=0.7, label="accuracy")  # fmt: skip
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    filled = counts > 0
    label = "bin: (mean confidence, accuracy)"
    axis.plot(confidence[filled], hits[filled], "o", color="C3", label=label)
    ece = expected_calibration_error(probabilities, labels)
    axis.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
             title=f"{title} (ECE {ece:.4f}, n={counts.sum()})")  # fmt: skip
    axis.legend(loc="upper left")
    return _save(figure, path)


def plot_abstention(fractions: np.ndarray, curves: dict[str, list[float]], path: Path) -> Path:
    """Accuracy on the kept inputs against the fraction rejected, one line per score."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, accuracy in curves.items():
        axis.plot(fractions, accuracy, "o-", label=name)
    axis.set(xlabel="fraction rejected (most uncertain first)", ylabel="accuracy of the rest")
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


def plot_experiment(name: str, results: dict[str, list[dict]], path: Path) -> Path:
    """Learning curves of one experiment: validation accuracy and training loss per
    epoch, mean over seeds, one line per variant."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant, runs in results.items():
        for axis, key in zip(axes, ("val_accuracy", "loss"), strict=True):
            longest = max(len(run[key]) for run in runs)
            padded = np.full((len(runs), longest), np.nan)
            for i, run in enumerate(runs):
                padded[i, : len(run[key])] = run[key]
            axis.plot(np.arange(1, longest + 1), np.nanmean(padded, axis=0), label=variant)
    axes[0].set(title=f"{name}: validation accuracy", xlabel="epoch")
    axes[1].set(title=f"{name}: training loss", xlabel="epoch", yscale="log")
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
