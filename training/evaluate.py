"""`uqserve evaluate`: calibration, OOD detection, abstention and guarantees of an exported model.

Rebuilds the model's own splits from the config saved with it, draws the
largest T once and reads smaller T off the first samples, so every T sees the
same dropout masks.

For a model with calibrated guarantees (`card.guarantees`) it also rebuilds
the calibration split and reruns calibration and test at the card's T with the
training seed, exactly as training did, to check that the stored calibration
is reproduced and to measure the stored sets and acceptance rule on the test
split: coverage and set size per alpha, class-conditional coverage, a
re-split validity check of the coverage guarantee, and risk-coverage curves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from adapters.model_store import StoredModel, update_metadata
from models.card import ModelCard
from models.conformal import (
    ALPHA_TOLERANCE,
    ConformalCalibration,
    Method,
    coverage,
    prediction_sets,
)
from models.density import OODScore
from models.guarantees import Calibrated, Guarantees, measure, uncertainty_scores
from models.mc_dropout import MCDropoutPredictor
from models.ood import abstention_curve, detection_metrics
from models.selective import risk_coverage_curve
from models.uncertainty import mean_probabilities, mutual_information, predictive_entropy, summarize
from training import ood_sets
from training.config import TrainConfig
from training.data import Splits, load_dataset, split_dataset, training_config
from training.outputs import SplitOutputs, predictor_outputs
from training.pipeline import fit_guarantees
from training.plots import (
    plot_abstention,
    plot_reliability,
    plot_risk_coverage,
    plot_set_coverage,
    plot_shift,
)
from training.progress import progress_bar
from training.report import CORRUPTION_PLOT, RISK_PLOT, ROTATION_PLOT, SET_PLOT, write_report
from training.shift_evaluation import ShiftEvaluation, prepare, shift_evaluation
from training.shifts import conditions

REJECT = np.round(np.arange(0.0, 0.55, 0.05), 2)
ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)  # test coverage and set size at these
VALIDITY_ALPHAS = (0.05, 0.1, 0.2)  # the re-split validity check at these
RESPLITS = 200  # random calibration/test re-splits of the validity check
TOLERANCE = 3.0  # standard errors the re-split mean coverage may lie outside its interval
RISK_LEVELS = (0.01, 0.02, 0.05, 0.1)  # the risk-coverage table: best coverage at these risks
CALIBRATIONS = ("mc", "single")  # the two calibrations of `Guarantees`
Curves = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # distribution -> score -> curve


@dataclass
class GuaranteeEvaluation:
    """The card's calibrated guarantees measured on the test split.

    Keyed by calibration ("mc": T = `samples`, "single": one dropout sample)
    and, for the sets, by alpha written with `:g` (JSON keys are strings).
    """

    method: str
    calibration_size: int
    samples: int
    default_alpha: float
    reproduced: dict[str, dict[str, float | bool | None]] = field(default_factory=dict)
    sets: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    class_coverage: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    validity: dict[str, dict[str, float | bool | int]] = field(default_factory=dict)
    risk_coverage: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    acceptance: dict[str, dict[str, float | str | None]] = field(default_factory=dict)
    by_samples: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """Every figure of a report; `guarantees` None when the model has none."""

    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    ood: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    abstention: dict[str, list[float]] = field(default_factory=dict)
    guarantees: GuaranteeEvaluation | None = None
    shift: ShiftEvaluation | None = None


def ood_scores(outputs: SplitOutputs, density: OODScore | None) -> dict[str, np.ndarray]:
    """The scores, each 'higher = more likely out of distribution': three from the
    samples, the served feature-density score, and each of its parts when it has several."""
    mean = outputs.samples.mean(axis=1)  # (N, C)
    scores = {
        "max_probability": 1.0 - mean.max(axis=1),
        "predictive_entropy": predictive_entropy(outputs.samples),
        "mutual_information": mutual_information(outputs.samples),
    }
    if density is not None:
        scores["feature_density"] = density.score(outputs.features)
        parts = density.part_scores(outputs.features)
        if len(parts) > 1:
            scores.update({f"density_{name}": values for name, values in parts.items()})
    return scores


def calibration(outputs: SplitOutputs, labels: np.ndarray, grid: list[int]) -> dict:
    """Deterministic and MC metrics at each T of `grid`."""
    table = {"deterministic": summarize(outputs.deterministic[:, None], labels)}
    for t in grid:
        table[f"mc_T{t}"] = summarize(outputs.samples[:, :t], labels)
    return table


def rebuilt_splits(card: ModelCard) -> tuple[Splits, TrainConfig]:
    """All four splits of an exported model, rebuilt from its saved training config.

    Like `training.data.held_out_split`, but keeping the calibration split too:
    the split is seeded and stratified, so each part is exactly training's.
    """
    config = training_config(card)
    data = load_dataset(config.data.dataset, config.preprocessing)
    return split_dataset(data, config.data, config.seed), config


NAMED_OOD_SETS = ("mnist",)  # `--ood-set`: OOD sets beyond the two always measured


@dataclass(frozen=True)
class Options:
    """What `uqserve evaluate` measures besides the always-measured figures."""

    grid: list[int]  # MC T values reported
    folders: list[Path] = field(default_factory=list)  # extra OOD image folders
    named: list[str] = field(default_factory=list)  # extra OOD sets of NAMED_OOD_SETS
    seed: int = 0
    shift: bool = False  # the shift section (training.shift_evaluation)
    quick: bool = False  # the shift section's quick conditions


def _ood_sets(seed: int, count: int, options: Options) -> dict[str, list[np.ndarray]]:
    """Photo crops and noise, any named sets (`mnist`), any folders; `count` images each."""
    sets = {"photo_crops": ood_sets.photo_crops(count, seed), "noise": ood_sets.noise(count, seed)}
    for name in options.named:
        if name not in NAMED_OOD_SETS:
            raise ValueError(
                f"Invalid value for `ood_set`: expected one of {NAMED_OOD_SETS}, received {name!r}"
            )
        sets[name] = getattr(ood_sets, name)(count, seed)
    for path in options.folders:
        sets[f"folder:{Path(path).name}"] = ood_sets.folder(path, count, seed)
    return sets


def _stage_count(card: ModelCard, options: Options, ood_count: int) -> int:
    """How many steps the progress bar counts."""
    count = 3 + ood_count + 2 * (card.guarantees is not None)
    if options.shift:
        count += 2 + len(conditions(options.quick)) + ood_count
    return count


def evaluate(
    tag: str, output_root: Path, options: Options, quiet: bool = False
) -> tuple[Path, Evaluation]:
    """Run every measurement, write the report folder, record headline figures.

    Its stages (test split, each OOD set, calibration and test split at the
    card's T when it has guarantees, the shift conditions when asked, plots
    and report) take minutes on a CPU; a bar on stderr steps through them
    unless `quiet` or not a terminal.
    """
    with progress_bar(quiet) as bar:
        stages = bar.add_task("loading the model", total=None)
        stored = StoredModel.open(tag)
        tag, card, density = stored.tag, stored.card, stored.density()
        splits, config = rebuilt_splits(card)
        images = _ood_sets(options.seed, len(splits.test.labels), options)
        bar.update(stages, total=_stage_count(card, options, len(images)), completed=1)

        def step(description: str) -> None:
            bar.update(stages, advance=1, description=description)

        predictor, most = stored.predictor(), max(options.grid)
        result, outputs = _core(predictor, card, splits, density, images, options, step)
        curves: Curves = {}
        if card.guarantees is not None:
            result.guarantees, curves = _guarantees(
                predictor, card, splits, config, options.seed, step
            )
            result.guarantees.by_samples = served_by_samples(
                card.guarantees, outputs.samples, splits.test.labels, options.grid
            )
        if options.shift:
            step("shift: temperatures and set calibrations")
            raw = MCDropoutPredictor(predictor.model)  # untempered: temperatures are compared
            context = prepare(raw, card, splits, density, tuple(options.grid), options.seed)
            result.shift = shift_evaluation(
                raw, context, splits, images, options.seed, options.quick, step
            )
        step("plots and report")
        folder = output_root / tag.replace(":", "_")  # reports/<name>_<version>
        _write(folder, tag, card, result, outputs, splits.test.labels, most, curves)
        update_metadata(tag, "evaluation", headline(result, most))
        bar.advance(stages)
    return folder, result


def _core(
    predictor: MCDropoutPredictor, card: ModelCard, splits: Splits, density: OODScore | None,
    images: dict[str, list[np.ndarray]], options: Options, step: Callable[[str], None],
) -> tuple[Evaluation, SplitOutputs]:  # fmt: skip
    """Calibration at each T, OOD detection per set and score, abstention curves."""
    prep, most, seed = card.model.preprocessing, max(options.grid), options.seed
    step(f"test split, T={most}")
    outputs = predictor_outputs(predictor, splits.test.images, prep, most, seed)
    result = Evaluation(calibration=calibration(outputs, splits.test.labels, options.grid))
    in_scores = ood_scores(outputs, density)
    for name, ood_images in images.items():
        step(f"OOD set {name}")
        out_scores = ood_scores(predictor_outputs(predictor, ood_images, prep, most, seed), density)
        result.ood[name] = {
            score: detection_metrics(in_scores[score], out_scores[score]) for score in in_scores
        }
    correct = outputs.samples.mean(axis=1).argmax(axis=1) == splits.test.labels
    for score, values in in_scores.items():
        result.abstention[score] = abstention_curve(correct, values, REJECT).tolist()
    return result, outputs


def _guarantees(
    predictor: MCDropoutPredictor,
    card: ModelCard,
    splits: Splits,
    config: TrainConfig,
    seed: int,
    step: Callable[[str], None],
) -> tuple[GuaranteeEvaluation, Curves]:
    """Calibration and test split at the card's T with the training seed, as training ran
    them (so the stored calibration can be reproduced), then every guarantee figure."""
    prep, t = card.model.preprocessing, card.mc_samples
    step(f"calibration split, T={t}")
    held = predictor_outputs(predictor, splits.calibration.images, prep, t, config.seed)
    step(f"test split, T={t}, training seed")
    test = predictor_outputs(predictor, splits.test.images, prep, t, config.seed)
    return guarantee_figures(card, splits, config, (held, test), seed)


def served_by_samples(
    guarantees: Guarantees, samples: np.ndarray, labels: np.ndarray, grid: list[int]
) -> dict[str, dict[str, float | bool]]:
    """The served answer at each T of `grid` (from test samples (N, T_max, C)): coverage and
    set size at the default alpha, accepted fraction and their error rate.

    T = 1 and the card's T are calibrated; every other T borrows the `mc`
    calibration, as the service does, and this measures how far that holds.
    """
    rows: dict[str, dict[str, float | bool]] = {}
    wrong_at = {t: samples[:, :t].mean(axis=1).argmax(axis=1) != labels for t in grid}
    for t in grid:
        calibrated = guarantees.for_samples(t)
        members, accepted = calibrated.answer(samples[:, :t], guarantees.default_alpha)
        wrong = wrong_at[t][accepted]
        rows[str(t)] = {
            "calibrated": t in (1, calibrated.samples),
            "coverage": coverage(members, labels),
            "set_size": float(members.sum(axis=1).mean()),
            "accepted_fraction": float(accepted.mean()),
            "accepted_error_rate": float(wrong.mean()) if wrong.size else 0.0,
        }
    return rows


def guarantee_figures(
    card: ModelCard,
    splits: Splits,
    config: TrainConfig,
    outputs: tuple[SplitOutputs, SplitOutputs],
    seed: int,
) -> tuple[GuaranteeEvaluation, Curves]:
    """Every figure of the card's guarantees from the (calibration, test) `outputs` at its T.

    Sets are measured as served; `seed` draws the validity check's re-splits; the
    curves are the risk-coverage curves of each distribution and score.
    """
    guarantees = _required(card.guarantees)
    held, test = outputs
    labels = splits.test.labels
    samples = {"mc": test.samples, "single": test.samples[:, :1]}
    figures = GuaranteeEvaluation(
        method=guarantees.mc.sets.method, calibration_size=guarantees.mc.sets.n,
        samples=card.mc_samples, default_alpha=guarantees.default_alpha,
    )  # fmt: skip
    figures.reproduced = reproduction(guarantees, fit_guarantees(held, test, splits, config))
    grid = tuple(sorted({*ALPHAS, guarantees.default_alpha}))  # the default is always shown
    for name in CALIBRATIONS:
        calibrated = getattr(guarantees, name)
        figures.sets[name] = set_figures(calibrated, samples[name], labels, grid)
        figures.acceptance[name] = acceptance(calibrated, samples[name], labels)
    figures.class_coverage = class_coverage(guarantees, samples, labels, card.class_names)
    pooled = np.concatenate([mean_probabilities(held.samples), mean_probabilities(test.samples)])
    pooled_labels = np.concatenate([splits.calibration.labels, labels])
    figures.validity = validity_check(
        pooled, pooled_labels, figures.calibration_size, guarantees.mc.sets.method, seed
    )
    curves = {name: risk_coverage_curves(s, labels) for name, s in distributions(test).items()}
    levels = sorted({*RISK_LEVELS, guarantees.mc.risk.target_risk})
    figures.risk_coverage = {
        name: {score: coverage_at_risk(*curve, levels) for score, curve in lines.items()}
        for name, lines in curves.items()
    }
    figures.notes = notes(figures)
    return figures, curves


def _required(guarantees: Guarantees | None) -> Guarantees:
    """`guarantees`, or a ValueError for a card without them."""
    if guarantees is None:
        raise ValueError("Invalid value for `card`: expected a model card with `guarantees`")
    return guarantees


def reproduction(
    stored: Guarantees, refit: Guarantees
) -> dict[str, dict[str, float | bool | None]]:
    """Per calibration: are the refit calibration scores exactly the stored ones, the
    largest difference (None when their counts differ), and is the acceptance rule the same.

    Same model, data, seed and platform give equality; another platform (GPU
    training, CPU evaluation) may differ in the last bits, which is reported.
    """
    rows: dict[str, dict[str, float | bool | None]] = {}
    for name in CALIBRATIONS:
        old, new = getattr(stored, name), getattr(refit, name)
        before, after = np.asarray(old.sets.scores), np.asarray(new.sets.scores)
        same_size = before.shape == after.shape
        rows[name] = {
            "scores_equal": same_size and bool(np.array_equal(before, after)),
            "max_difference": float(np.abs(before - after).max()) if same_size else None,
            "rule_equal": old.risk == new.risk,
        }
    return rows


def allowed(sets: ConformalCalibration, alpha: float) -> bool:
    """Whether `alpha` is in the calibration's range [1/(n+1), 1) (up to float round-off)."""
    return sets.alpha_range[0] - ALPHA_TOLERANCE <= alpha < 1.0


def set_figures(
    calibrated: Calibrated, samples: np.ndarray, labels: np.ndarray, alphas: tuple[float, ...]
) -> dict[str, dict[str, float]]:
    """Test coverage and mean set size at each alpha in the allowed range, keyed `:g`.

    Samples (N, T, C); alphas below the range are left out (no set is defined
    there: it would need more calibration images); `notes` says so.
    """
    probs = mean_probabilities(samples)  # (N, C)
    rows: dict[str, dict[str, float]] = {}
    for alpha in (a for a in alphas if allowed(calibrated.sets, a)):
        members = calibrated.served_sets(probs, alpha)  # (N, C), as served
        rows[f"{alpha:g}"] = {
            "coverage": coverage(members, labels),
            "set_size": float(members.sum(axis=1).mean()),
        }
    return rows


def class_coverage(
    guarantees: Guarantees,
    samples: dict[str, np.ndarray],
    labels: np.ndarray,
    class_names: tuple[str, ...],
) -> dict[str, dict[str, float | int | None]]:
    """Per class name: its test images and the coverage of its images at the default alpha,
    per calibration (None: no test image). The guarantee is marginal: single
    classes may fall below 1 - alpha; this shows which."""
    alpha = guarantees.default_alpha
    if not allowed(guarantees.mc.sets, alpha):
        return {}
    members = {
        name: getattr(guarantees, name).served_sets(mean_probabilities(samples[name]), alpha)
        for name in CALIBRATIONS
    }  # fmt: skip
    rows: dict[str, dict[str, float | int | None]] = {}
    for index, class_name in enumerate(class_names):
        mine = labels == index
        row: dict[str, float | int | None] = {"test_images": int(mine.sum())}
        for name, sets in members.items():
            row[name] = coverage(sets[mine], labels[mine]) if mine.any() else None
        rows[class_name] = row
    return rows


def validity_check(
    probs: np.ndarray,
    labels: np.ndarray,
    n: int,
    method: Method,
    seed: int,
    alphas: tuple[float, ...] = VALIDITY_ALPHAS,
    resplits: int = RESPLITS,
) -> dict[str, dict[str, float | bool | int]]:
    """The standard check of the coverage guarantee on pooled outputs probs (N, C), labels (N,).

    Each of `resplits` seeded random re-splits puts n pooled images in a
    calibration split and the rest in a test split, refits the calibration and
    measures test coverage. With exchangeable, tie-free scores the expected
    coverage lies in [1 - alpha, 1 - alpha + 1/(n+1)]; the check passes when the
    mean over re-splits lies there up to `TOLERANCE` standard errors. Alphas
    below 1/(n+1) are left out (no set is defined there).
    """
    rng = np.random.default_rng([seed, 13])
    kept = [a for a in alphas if 1.0 / (n + 1) - ALPHA_TOLERANCE <= a < 1.0]
    hits = np.empty((resplits, len(kept)))  # coverage per re-split and alpha
    for r in range(resplits):
        order = rng.permutation(len(labels))
        held, rest = order[:n], order[n:]
        fitted = ConformalCalibration.fit(probs[held], labels[held], method, rng)
        for j, alpha in enumerate(kept):
            members = prediction_sets(probs[rest], fitted, alpha, rng)
            hits[r, j] = coverage(members, labels[rest])
    return {f"{a:g}": _validity_row(hits[:, j], a, n) for j, a in enumerate(kept)}


def _validity_row(coverages: np.ndarray, alpha: float, n: int) -> dict[str, float | bool | int]:
    """Mean coverage over re-splits, its interval and standard error, and pass/fail."""
    mean = float(coverages.mean())
    error = float(coverages.std(ddof=1) / math.sqrt(len(coverages)))
    lower, upper = 1.0 - alpha, 1.0 - alpha + 1.0 / (n + 1)
    return {
        "mean_coverage": mean,
        "lower": lower,
        "upper": upper,
        "standard_error": error,
        "tolerance": TOLERANCE * error,
        "passed": lower - TOLERANCE * error <= mean <= upper + TOLERANCE * error,
        "resplits": len(coverages),
        "calibration_size": n,
    }


def distributions(test: SplitOutputs) -> dict[str, np.ndarray]:
    """The predictive distributions compared, each as samples (N, T, C): the deterministic
    answer, one dropout sample (the `single` calibration) and all T (`mc`)."""
    return {
        "deterministic": test.deterministic[:, None],
        "single": test.samples[:, :1],
        "mc": test.samples,
    }


def risk_coverage_curves(
    samples: np.ndarray, labels: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per score of `uncertainty_scores`: (coverage, risk) when accepting iff score <= t,
    for each distinct t; samples (N, T, C), labels (N,)."""
    correct = mean_probabilities(samples).argmax(axis=1) == labels
    return {
        name: risk_coverage_curve(values, correct)[:2]
        for name, values in uncertainty_scores(samples).items()
    }


def coverage_at_risk(
    accepted: np.ndarray, risk: np.ndarray, levels: list[float]
) -> dict[str, float]:
    """Per risk level (keyed `:g`): the largest coverage whose error rate among accepted
    is at most that level (0 when none). Read off the test split: an oracle, not a rule."""
    return {f"{level:g}": float(accepted[risk <= level].max(initial=0.0)) for level in levels}


def acceptance(
    calibrated: Calibrated, samples: np.ndarray, labels: np.ndarray
) -> dict[str, float | str | None]:
    """The stored acceptance rule and what it does on the test split (samples (N, T, C)).

    The test figures come from `models.guarantees.measure`, as in training.
    """
    rule = calibrated.risk
    test = measure(calibrated, samples, labels).test
    return {
        "score": rule.score,
        "threshold": rule.threshold,
        "target_risk": rule.target_risk,
        "delta": rule.delta,
        "calibration_accepted_fraction": rule.accepted_fraction,
        "accepted_fraction": test["accepted_fraction"],
        "accepted_error_rate": test["accepted_error_rate"],
        "reason": rule.reason,
    }


def notes(figures: GuaranteeEvaluation) -> list[str]:
    """What was skipped or went wrong, in words, for the report."""
    n = figures.calibration_size
    said: list[str] = []
    range_text = f"below the allowed range [1/(n+1) = {1.0 / (n + 1):.4g}, 1) with n = {n}"
    skipped = [f"{a:g}" for a in ALPHAS if f"{a:g}" not in figures.sets["mc"]]
    if skipped:
        said.append(f"alpha = {', '.join(skipped)} {range_text}: no coverage or set size there.")
    unchecked = [f"{a:g}" for a in VALIDITY_ALPHAS if f"{a:g}" not in figures.validity]
    if unchecked:
        said.append(f"Validity check at alpha = {', '.join(unchecked)} skipped: {range_text}.")
    if not figures.class_coverage:
        said.append(f"Class-conditional coverage skipped: default alpha {range_text}.")
    for name, row in figures.reproduced.items():
        if not (row["scores_equal"] and row["rule_equal"]):
            said.append(
                f"The refit `{name}` calibration differs from the card's (scores equal: "
                f"{row['scores_equal']}, largest difference: {row['max_difference']}, rule equal: "
                f"{row['rule_equal']}): another model, dataset or platform than training's? "
                "The figures use the card's stored calibration."
            )
    for name, row in figures.acceptance.items():
        if row["threshold"] is None:
            said.append(f"No `{name}` acceptance threshold was certified: {row['reason']}")
    return said


def headline(result: Evaluation, most: int) -> dict[str, float]:
    """The figures that go into the model's metadata."""
    figures = {
        "test_nll_deterministic": result.calibration["deterministic"]["nll"],
        f"test_nll_mc_T{most}": result.calibration[f"mc_T{most}"]["nll"],
        f"test_ece_mc_T{most}": result.calibration[f"mc_T{most}"]["ece"],
    }
    for name, table in result.ood.items():
        figures[f"ood_best_auroc_{name}"] = max(row["auroc"] for row in table.values())
    if result.guarantees is not None:
        figures.update(guarantee_headline(result.guarantees))
    if result.shift is not None:
        for name in ("deterministic", result.shift.served):
            key = "mc" if name == result.shift.served else name
            figures[f"shifted_nll_{key}"] = result.shift.summary[name]["shifted_nll"]
            figures[f"shifted_ece_{key}"] = result.shift.summary[name]["shifted_ece"]
    return figures


def guarantee_headline(figures: GuaranteeEvaluation) -> dict[str, float]:
    """MC coverage and set size at the default alpha, the stored rule's test acceptance,
    and whether the validity check passed and the calibration was reproduced."""
    alpha = f"{figures.default_alpha:g}"
    row = figures.sets["mc"].get(alpha)
    headline_figures: dict[str, float] = {}
    if row is not None:
        headline_figures[f"coverage@{alpha}"] = row["coverage"]
        headline_figures[f"set_size@{alpha}"] = row["set_size"]
    accepted = figures.acceptance["mc"]
    headline_figures["accepted_fraction"] = float(accepted["accepted_fraction"] or 0.0)
    headline_figures["accepted_error_rate"] = float(accepted["accepted_error_rate"] or 0.0)
    checks = figures.validity.values()
    headline_figures["validity_passed"] = bool(checks) and all(c["passed"] for c in checks)
    reproduced = figures.reproduced.values()
    headline_figures["calibration_reproduced"] = all(r["scores_equal"] for r in reproduced)
    return headline_figures


def _write(
    folder: Path, tag: str, card: ModelCard, result: Evaluation, outputs: SplitOutputs,
    labels: np.ndarray, most: int, curves: Curves,
) -> None:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    plot_reliability(
        outputs.deterministic, labels, "deterministic", folder / "reliability_deterministic.png"
    )
    plot_reliability(
        outputs.samples.mean(axis=1), labels, f"MC dropout, T={most}", folder / "reliability_mc.png"
    )
    plot_abstention(REJECT, result.abstention, folder / "abstention.png")
    if result.guarantees is not None:
        _plot_guarantees(folder, result.guarantees, curves)
    if result.shift is not None:
        names = list(result.shift.summary)
        plot_shift(result.shift.conditions, names, True, folder / ROTATION_PLOT)
        plot_shift(result.shift.conditions, names, False, folder / CORRUPTION_PLOT)
    metrics = {"model": tag, "rejected_fractions": REJECT.tolist(), **asdict(result)}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(folder / "report.md", tag, card, result, REJECT)


def _plot_guarantees(folder: Path, figures: GuaranteeEvaluation, curves: Curves) -> None:
    """Coverage and set size against alpha, and the risk-coverage curves with each
    stored rule's test operating point (none where no threshold was certified)."""
    titles = {
        "deterministic": "deterministic",
        "single": "one dropout sample (T=1)",
        "mc": f"MC dropout (T={figures.samples})",
    }
    sets = {titles[name]: figures.sets[name] for name in CALIBRATIONS}
    plot_set_coverage(sets, figures.calibration_size, folder / SET_PLOT)
    points = {
        titles[name]: (float(row["accepted_fraction"]), float(row["accepted_error_rate"]))
        for name, row in figures.acceptance.items()
        if row["threshold"] is not None
    }
    target = float(figures.acceptance["mc"]["target_risk"])
    lines = {titles[name]: curve for name, curve in curves.items()}
    plot_risk_coverage(lines, points, target, folder / RISK_PLOT)
