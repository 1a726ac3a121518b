"""Plots: learning curves, reliability diagrams, abstention curves, prediction-set
coverage against alpha, risk-coverage curves, metrics under distribution shift."""

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


def plot_set_coverage(sets: dict[str, dict[str, dict[str, float]]], n: int, path: Path) -> Path:
    """Test coverage and mean set size against alpha, one line per calibration.

    `sets` maps a label to {alpha (as text): {"coverage", "set_size"}}; the
    coverage panel shows the guaranteed 1 - alpha and, dotted, the upper end
    1 - alpha + 1/(n+1) of the expected coverage with n calibration images.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    alphas = [float(a) for rows in sets.values() for a in rows]
    grid = np.linspace(0.0, max(alphas, default=0.3), 50)
    left.plot(grid, 1.0 - grid, "--", color="grey", label=r"$1 - \alpha$ (guaranteed)")
    left.plot(grid, 1.0 - grid + 1.0 / (n + 1), ":", color="grey", label=r"$1 - \alpha + 1/(n+1)$")
    for label, rows in sets.items():
        x = [float(a) for a in rows]
        left.plot(x, [row["coverage"] for row in rows.values()], "o-", label=label)
        right.plot(x, [row["set_size"] for row in rows.values()], "o-", label=label)
    title = f"coverage (n={n} calibration images)"
    left.set(xlabel=r"$\alpha$", ylabel="test coverage", title=title)
    right.set(xlabel=r"$\alpha$", ylabel="mean set size", title="mean prediction-set size")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _save(figure, path)


def plot_risk_coverage(
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    points: dict[str, tuple[float, float]],
    target: float,
    path: Path,
) -> Path:
    """Error rate among accepted against fraction accepted: one panel per predictive
    distribution (`curves` title -> score -> (coverage, risk)), one line per score.

    `points` marks, per title, a stored rule's test operating point (accepted
    fraction, accepted error rate); the dashed line is the target risk r*.
    """
    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for axis, (title, lines) in zip(axes[0], curves.items(), strict=True):
        for score, (coverage, risk) in lines.items():
            axis.plot(coverage, risk, ".-", label=score)
        axis.axhline(target, linestyle="--", color="grey", label=f"target risk r*={target:g}")
        if title in points:
            axis.plot(*points[title], "*", color="black", markersize=14, label="chosen rule (test)")
        axis.set(xlabel="coverage (fraction accepted)", ylabel="risk (error rate of accepted)",
                 title=title, xlim=(0.0, 1.02))  # fmt: skip
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return _save(figure, path)


SHIFT_METRICS = (
    ("accuracy", "accuracy"),
    ("nll", "NLL"),
    ("ece", "ECE"),
    ("coverage", "set coverage"),
)


def _shift_lines(
    rows: list[dict], name: str, metric: str, rotation: bool
) -> tuple[list[float], list[float]]:
    """x and mean of one predictor's metric: per rotation angle (clean at 0), or per
    corruption intensity, the mean over the corruptions."""
    clean = next(r for r in rows if r["shift"] == "clean")
    chosen = [r for r in rows if (r["shift"] == "rotation") == rotation and r["shift"] != "clean"]
    by_x: dict[float, list[float]] = {0.0: [clean["predictors"][name].get(metric, np.nan)]}
    for row in chosen:
        x = float(row["parameter"] if rotation else row["intensity"])
        by_x.setdefault(x, []).append(row["predictors"][name].get(metric, np.nan))
    xs = sorted(by_x)
    return xs, [float(np.mean(by_x[x])) for x in xs]


def plot_shift(rows: list[dict], names: list[str], rotation: bool, path: Path) -> Path:
    """Accuracy, NLL, ECE and prediction-set coverage against shift intensity, one line
    per predictor: against the rotation angle (`rotation`), or against the corruption
    intensity (the mean over noise, blur, contrast and translation)."""
    figure, axes = plt.subplots(1, len(SHIFT_METRICS), figsize=(5 * len(SHIFT_METRICS), 4))
    for axis, (metric, title) in zip(axes, SHIFT_METRICS, strict=True):
        for name in names:
            xs, mean = _shift_lines(rows, name, metric, rotation)
            axis.plot(xs, mean, "o-", markersize=3, label=name)
        axis.set(title=title, xlabel="rotation (degrees)" if rotation else "corruption intensity")
        axis.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
