"""The Markdown report of `uqserve evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.card import ModelCard


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats get 4 decimals."""

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: Path, tag: str, card: ModelCard, result: Any, rejected: np.ndarray) -> Path:
    """report.md: calibration, OOD detection and abstention tables, and the plots."""
    metrics = ["accuracy", "nll", "brier", "ece"]
    calibration = table(
        ["prediction", *metrics],
        [[name, *(row[m] for m in metrics)] for name, row in result.calibration.items()],
    )
    ood = "\n\n".join(
        f"**{name}**\n\n"
        + table(
            ["score", "AUROC", "AUPR", "FPR@95%TPR"],
            [[s, r["auroc"], r["aupr"], r["fpr95"]] for s, r in rows.items()],
        )
        for name, rows in result.ood.items()
    )
    abstention = table(
        ["rejected", *result.abstention],
        [
            [f"{f:.2f}", *(curve[i] for curve in result.abstention.values())]
            for i, f in enumerate(rejected)
        ],
    )
    text = f"""# Evaluation of {tag}

Test split rebuilt from the model's saved config ({card.training.get("data", {})}).
Uncertain threshold (MI): {card.uncertain_threshold}; OOD threshold: {card.ood_threshold}.

## Calibration

{calibration}

![deterministic](reliability_deterministic.png) ![MC dropout](reliability_mc.png)

## Out-of-distribution detection

Scores: 1 - max probability, predictive entropy, mutual information (all from
MC dropout), and the feature density of the base's pooled features. OOD is the
positive class for AUROC and AUPR.

{ood}

## Abstention

Accuracy of the inputs kept after rejecting the most uncertain fraction.

{abstention}

![abstention](abstention.png)
"""
    path.write_text(text)
    return path
