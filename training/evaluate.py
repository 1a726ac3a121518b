"""`uqserve evaluate`: calibration, OOD detection and abstention of an exported model.

Rebuilds the model's own test split from the config saved with it, draws the
largest T once and reads smaller T off the first samples, so every T sees the
same dropout masks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapters.model_store import StoredModel, update_metadata
from models.card import ModelCard
from models.density import FeatureDensity
from models.ood import abstention_curve, detection_metrics
from models.uncertainty import mutual_information, predictive_entropy, summarize
from training import ood_sets
from training.data import held_out_split
from training.outputs import SplitOutputs, predictor_outputs
from training.plots import plot_abstention, plot_reliability
from training.progress import progress_bar
from training.report import write_report

REJECT = np.round(np.arange(0.0, 0.55, 0.05), 2)


@dataclass
class Evaluation:
    """Every figure of a report."""

    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    ood: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    abstention: dict[str, list[float]] = field(default_factory=dict)


def ood_scores(outputs: SplitOutputs, density: FeatureDensity | None) -> dict[str, np.ndarray]:
    """The four scores, each 'higher = more likely out of distribution'."""
    mean = outputs.samples.mean(axis=1)  # (N, C)
    scores = {
        "max_probability": 1.0 - mean.max(axis=1),
        "predictive_entropy": predictive_entropy(outputs.samples),
        "mutual_information": mutual_information(outputs.samples),
    }
    if density is not None:
        scores["feature_density"] = -density.log_density(outputs.embeddings)
    return scores


def calibration(outputs: SplitOutputs, labels: np.ndarray, grid: list[int]) -> dict:
    """Deterministic and MC metrics at each T of `grid`."""
    table = {"deterministic": summarize(outputs.deterministic[:, None], labels)}
    for t in grid:
        table[f"mc_T{t}"] = summarize(outputs.samples[:, :t], labels)
    return table


def _ood_sets(card_seed: int, count: int, folders: list[Path]) -> dict[str, list[np.ndarray]]:
    sets = {
        "photo_crops": ood_sets.photo_crops(count, card_seed),
        "noise": ood_sets.noise(count, card_seed),
    }
    for path in folders:
        sets[f"folder:{Path(path).name}"] = ood_sets.folder(path, count, card_seed)
    return sets


def evaluate(
    tag: str,
    output_root: Path,
    grid: list[int],
    folders: list[Path],
    seed: int = 0,
    quiet: bool = False,
) -> tuple[Path, Evaluation]:
    """Run every measurement, write the report folder, record headline figures.

    Its stages (test split, each OOD set, plots and report) take minutes on a
    CPU; a bar on stderr steps through them unless `quiet` or not a terminal.
    """
    with progress_bar(quiet) as bar:
        stages = bar.add_task("loading the model", total=5 + len(folders))
        stored = StoredModel.open(tag)
        test = held_out_split(stored.card)
        tag, card, density = stored.tag, stored.card, stored.density()
        predictor, prep, most = stored.predictor(), card.model.preprocessing, max(grid)
        bar.update(stages, advance=1, description=f"test split, T={most}")
        outputs = predictor_outputs(predictor, test.images, prep, most, seed)
        result = Evaluation(calibration=calibration(outputs, test.labels, grid))
        in_scores = ood_scores(outputs, density)
        for name, images in _ood_sets(seed, len(test.labels), folders).items():
            bar.update(stages, advance=1, description=f"OOD set {name}")
            out_scores = ood_scores(predictor_outputs(predictor, images, prep, most, seed), density)
            result.ood[name] = {
                score: detection_metrics(in_scores[score], out_scores[score]) for score in in_scores
            }
        correct = outputs.samples.mean(axis=1).argmax(axis=1) == test.labels
        for score, values in in_scores.items():
            result.abstention[score] = abstention_curve(correct, values, REJECT).tolist()
        bar.update(stages, advance=1, description="plots and report")
        folder = output_root / tag.replace(":", "_")  # reports/<name>_<version>
        _write(folder, tag, card, result, outputs, test.labels, most)
        update_metadata(tag, "evaluation", headline(result, most))
        bar.advance(stages)
    return folder, result


def headline(result: Evaluation, most: int) -> dict[str, float]:
    """The figures that go into the model's metadata."""
    figures = {
        "test_nll_deterministic": result.calibration["deterministic"]["nll"],
        f"test_nll_mc_T{most}": result.calibration[f"mc_T{most}"]["nll"],
        f"test_ece_mc_T{most}": result.calibration[f"mc_T{most}"]["ece"],
    }
    for name, table in result.ood.items():
        figures[f"ood_best_auroc_{name}"] = max(row["auroc"] for row in table.values())
    return figures


def _write(
    folder: Path, tag: str, card: ModelCard, result: Evaluation, outputs: SplitOutputs,
    labels: np.ndarray, most: int,
) -> None:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    plot_reliability(
        outputs.deterministic, labels, "deterministic", folder / "reliability_deterministic.png"
    )
    plot_reliability(
        outputs.samples.mean(axis=1), labels, f"MC dropout, T={most}", folder / "reliability_mc.png"
    )
    plot_abstention(REJECT, result.abstention, folder / "abstention.png")
    metrics = {"model": tag, "rejected_fractions": REJECT.tolist(), **result.__dict__}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(folder / "report.md", tag, card, result, REJECT)
