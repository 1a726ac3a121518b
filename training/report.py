"""The Markdown report of `uqserve evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.card import ModelCard

SET_PLOT = "coverage_vs_alpha.png"  # coverage and set size against alpha
RISK_PLOT = "risk_coverage.png"  # risk-coverage curves with the chosen operating points
ROTATION_PLOT = "shift_rotation.png"  # metrics against rotation, one line per predictor
CORRUPTION_PLOT = "shift_corruptions.png"  # metrics against corruption intensity
CALIBRATION_NAMES = {"mc": "MC", "single": "T=1"}  # the two calibrations, as table columns


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats get 4 decimals."""

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path: Path, tag: str, card: ModelCard, result: Any, rejected: np.ndarray) -> Path:
    """report.md: calibration, OOD detection and abstention tables, the guarantees, the plots."""
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
MC dropout), and `feature_density`, the served OOD score: the densities of the
L2-normalised pooled base features (`density_base`) and of the head's hidden
layer (`density_hidden`), each standardised on the validation split, summed.
OOD is the positive class for AUROC and AUPR.

{ood}

## Abstention

Accuracy of the inputs kept after rejecting the most uncertain fraction.

{abstention}

![abstention](abstention.png)

{guarantees_section(result.guarantees)}
{shift_section(result.shift)}"""
    path.write_text(text)
    return path


def _number(value: Any) -> str:
    """A figure for a table: 4 decimals, 'n/a' for a missing one."""
    return "n/a" if value is None else f"{value:.4f}"


def guarantees_section(figures: Any) -> str:
    """The guarantees part of the report, or a note that it was skipped (`figures` None)."""
    if figures is None:
        return (
            "## Guarantees\n\nSkipped: the model has no calibrated guarantees (it was trained "
            "without a calibration split), so there are no prediction sets or acceptance rule.\n"
        )
    parts = [
        _guarantees_intro(figures),
        _sets_section(figures),
        _class_section(figures),
        _validity_section(figures),
        _risk_section(figures),
        _by_samples_section(figures),
    ]
    return "\n\n".join(parts) + "\n"


def _by_samples_section(figures: Any) -> str:
    """The served answer at each evaluated T: calibrated ones and those borrowing `mc`."""
    rows = [
        [t, "yes" if row["calibrated"] else "no (uses T=" + str(figures.samples) + ")",
         row["coverage"], row["set_size"], row["accepted_fraction"], row["accepted_error_rate"]]
        for t, row in figures.by_samples.items()
    ]  # fmt: skip
    header = ["T", "calibrated", f"coverage (alpha = {figures.default_alpha:g})", "set size",
              "accepted", "error rate of accepted"]  # fmt: skip
    return (
        "### Served at other T\n\nA request's T picks its calibration: T=1 and the card's T "
        "are calibrated, every other T uses the card's. Measured on the test split with "
        "this report's seed:\n\n" + table(header, rows)
    )


def _guarantees_intro(figures: Any) -> str:
    """What was measured, whether training's calibration was reproduced, and the notes."""
    n, low = figures.calibration_size, 1.0 / (figures.calibration_size + 1)
    reproduced = all(row["scores_equal"] for row in figures.reproduced.values())
    text = (
        f"## Guarantees\n\nThe card's {figures.method.upper()} prediction sets (n = {n} "
        f"calibration images, allowed alpha in [1/(n+1) = {low:.4f}, 1), default alpha = "
        f"{figures.default_alpha:g}) and risk-controlled acceptance rule, measured on the test "
        f"split for MC dropout (T = {figures.samples}) and one dropout sample (T=1).\n\n"
        f"Calibration reproduced: {'yes' if reproduced else '**no**'} (the calibration split "
        "rerun with the training seed and refit, compared with the card's stored scores)."
    )
    if figures.notes:
        text += "\n\nNotes:\n\n" + "\n".join(f"- {note}" for note in figures.notes)
    return text


def _sets_section(figures: Any) -> str:
    """Coverage and mean set size per alpha, both calibrations, and the plot."""
    rows = [
        [alpha, _number(1.0 - float(alpha)),
         *(_number(figures.sets[name].get(alpha, {}).get(key))
           for name in CALIBRATION_NAMES for key in ("coverage", "set_size"))]
        for alpha in figures.sets["mc"]
    ]  # fmt: skip
    header = ["alpha", "1 - alpha", "coverage (MC)", "set size (MC)",
              "coverage (T=1)", "set size (T=1)"]  # fmt: skip
    return (
        "### Prediction sets\n\nTest coverage (fraction of images whose set holds the true "
        "class; guaranteed ≥ 1 - alpha on average) and mean set size.\n\n"
        f"{table(header, rows)}\n\n![coverage and set size against alpha]({SET_PLOT})"
    )


def _class_section(figures: Any) -> str:
    """Coverage per true class at the default alpha (the guarantee is marginal only)."""
    if not figures.class_coverage:
        return "### Class-conditional coverage\n\nSkipped (see the notes)."
    rows = [
        [name, row["test_images"], *(_number(row[c]) for c in CALIBRATION_NAMES)]
        for name, row in figures.class_coverage.items()
    ]
    return (
        f"### Class-conditional coverage (alpha = {figures.default_alpha:g})\n\nThe guarantee is "
        "marginal: single classes may fall below 1 - alpha.\n\n"
        + table(["class", "test images", "coverage (MC)", "coverage (T=1)"], rows)
    )


def _validity_section(figures: Any) -> str:
    """The re-split validity check: one line of verdict and a table per alpha."""
    checks = figures.validity
    if not checks:
        return "### Validity check\n\nValidity check: skipped (see the notes)."
    first = next(iter(checks.values()))
    verdict = "passed" if all(row["passed"] for row in checks.values()) else "**failed**"
    rows = [
        [alpha, _number(row["mean_coverage"]),
         f"[{row['lower']:.4f}, {row['upper']:.4f}]", _number(row["standard_error"]),
         "yes" if row["passed"] else "**no**"]
        for alpha, row in checks.items()
    ]  # fmt: skip
    return (
        f"### Validity check\n\nValidity check: {verdict}. Over {first['resplits']} random "
        f"re-splits of the pooled calibration and test outputs (MC) into "
        f"n = {first['calibration_size']} calibration images and the rest as test, the "
        "calibration is refit and test coverage measured; the mean coverage must lie in "
        "[1 - alpha, 1 - alpha + 1/(n+1)] up to 3 standard errors.\n\n"
        + table(["alpha", "mean coverage", "interval", "standard error", "within"], rows)
    )


def _risk_section(figures: Any) -> str:
    """Best test coverage at a few risk levels per distribution and score, the stored
    rules measured on the test split, and the plot."""
    levels = list(next(iter(next(iter(figures.risk_coverage.values())).values())))
    curves = [
        [distribution, score, *(_number(row[level]) for level in levels)]
        for distribution, scores in figures.risk_coverage.items()
        for score, row in scores.items()
    ]
    rules = [
        [CALIBRATION_NAMES[name], row["score"], _number(row["threshold"]),
         f"{row['target_risk']:g}", f"{row['delta']:g}",
         _number(row["calibration_accepted_fraction"]), _number(row["accepted_fraction"]),
         _number(row["accepted_error_rate"])]
        for name, row in figures.acceptance.items()
    ]  # fmt: skip
    rule_header = [
        "calibration", "score", "threshold", "target r*", "δ",
        "accepted (calibration)", "accepted (test)", "error rate of accepted (test)",
    ]  # fmt: skip
    return (
        "### Risk-coverage\n\nLargest test coverage (fraction accepted, most certain first) "
        "whose error rate among accepted is at most each risk; read off the test split, so "
        "the best possible, not a certified rule.\n\n"
        + table(["distribution", "score", *(f"coverage at risk ≤ {lv}" for lv in levels)], curves)
        + "\n\nThe stored acceptance rules, measured on the test split:\n\n"
        + table(rule_header, rules)
        + f"\n\n![risk-coverage curves]({RISK_PLOT})"
    )


def shift_section(figures: Any) -> str:
    """The shift section of report.md (empty without `--shift`)."""
    if figures is None:
        return ""
    names = list(figures.summary)
    groups = [g for g in ("clean", "rotation", "corruptions", "shifted")
              if f"{g}_nll" in figures.summary[names[0]]]  # fmt: skip
    summary = table(
        ["predictor", *(f"{g} {m}" for m in ("NLL", "ECE", "accuracy") for g in groups)],
        [[name, *(row[f"{g}_{m}"] for m in ("nll", "ece", "accuracy") for g in groups)]
         for name, row in figures.summary.items()],
    )  # fmt: skip
    temperatures = ", ".join(f"{k} {v:.3f}" for k, v in figures.temperatures.items())
    return f"""
## Under distribution shift

The test split rotated, noised, blurred, low in contrast and translated
(`training/shifts.py`), for each predictor. Temperatures: {temperatures} (fitted
by NLL on the validation split; the MC one is the card's when the model serves
one, here {figures.card_temperature:.3f}, 1 meaning none). Prediction sets at
alpha = {figures.alpha}
(the served predictor, {figures.served}, with the card's calibration; the others
calibrated the same way on the calibration split). Means over conditions:

{summary}

![rotation]({ROTATION_PLOT})

![corruptions]({CORRUPTION_PLOT})

{_condition_tables(figures.conditions, names)}

{_served_table(figures)}
"""


def _condition_tables(rows: list[dict], names: list[str]) -> str:
    """NLL and ECE per condition (rows) and predictor (columns)."""
    out = []
    for metric in ("nll", "ece", "accuracy"):
        body = [[f"{r['shift']} {r['intensity']}", *(r["predictors"][n][metric] for n in names)]
                for r in rows]  # fmt: skip
        out.append(f"**{metric} per condition**\n\n" + table(["condition", *names], body))
    return "\n\n".join(out)


def _served_table(figures: Any) -> str:
    """What the served predictor's user sees per condition and OOD set: set coverage and
    size, the fraction not accepted (`uncertain`), the fraction flagged OOD, mean MI."""
    keys = ("coverage", "set_size", "uncertain_fraction", "mean_mutual_information")
    rows = [(f"{r['shift']} {r['intensity']}", r) for r in figures.conditions]
    rows += [(f"OOD set {name}", r) for name, r in figures.ood_sets.items()]
    body = [[label, *(_number(r["predictors"][figures.served].get(k)) for k in keys),
             _number(r["ood_fraction"])] for label, r in rows]  # fmt: skip
    header = ["condition", "coverage", "set size", "uncertain", "mean MI", "flagged OOD"]
    return f"**The served answer ({figures.served})**\n\n" + table(header, body)
