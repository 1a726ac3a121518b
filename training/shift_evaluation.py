"""`uqserve evaluate --shift`: does each predictor's uncertainty hold as the test split moves?

After Ovadia et al. (2019): the test split under every shift of
`training.shifts` (rotation, noise, blur, contrast, translation), and the OOD
image sets, for each predictor:

- `deterministic`: dropout off;
- `deterministic + temperature`: one temperature fitted by NLL on the
  validation split (Guo et al. 2017), the standard post-hoc baseline;
- `MC T=t` for each t of the grid above 1: the mean of t dropout samples;
- `MC T=<served> + temperature`: the model's own T, each sample tempered by
  one temperature fitted on the validation split.

Each condition runs the deterministic part once and draws the largest T once;
smaller T read the first samples, so all predictors see the same masks.
Prediction sets at the card's default alpha: the untempered MC predictor at
the card's T uses the card's stored calibration, as served; every other
predictor is calibrated the same way (the card's method) on the calibration
split, which nothing else uses. `ood_fraction` (feature density above the
card's threshold) does not depend on the predictor; `uncertain_fraction`
(answers the card's risk rule does not accept) is given for the untempered MC
predictors, the ones that rule was calibrated for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from models.card import ModelCard
from models.conformal import ConformalCalibration, prediction_sets
from models.density import OODScore
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import rgb_at_size
from models.temperature import fit_temperature, temper
from models.uncertainty import mean_probabilities, mutual_information, predictive_entropy, summarize
from training.data import Splits
from training.outputs import SplitOutputs, predictor_outputs
from training.shifts import CORRUPTIONS, ROTATION, conditions

MC_GRID = (10, 30, 100)  # the MC predictors compared, besides the model's own T
SUMMARY_METRICS = ("accuracy", "nll", "brier", "ece")


@dataclass(frozen=True)
class Predictor:
    """One way to answer from a split's outputs: deterministic or MC at T, tempered or not."""

    name: str
    samples: int | None  # MC T; None: the deterministic answer
    tempered: bool

    def read(self, outputs: SplitOutputs, temperatures: dict[str, float]) -> np.ndarray:
        """This predictor's samples (N, T, C) from `outputs` (T = 1 when deterministic)."""
        if self.samples is None:
            raw = outputs.deterministic[:, None]  # (N, 1, C)
        else:
            raw = outputs.samples[:, : self.samples]  # (N, T, C)
        if not self.tempered:
            return raw
        return temper(raw, temperatures["deterministic" if self.samples is None else "mc"])


def predictors(grid: tuple[int, ...], served: int) -> list[Predictor]:
    """The compared predictors: deterministic, tempered, MC at each T of `grid` and the
    model's own T, and the model's own T tempered."""
    mc = sorted({t for t in grid if t > 1} | {served})
    return [
        Predictor("deterministic", None, False),
        Predictor("deterministic + temperature", None, True),
        *(Predictor(f"MC T={t}", t, False) for t in mc),
        Predictor(f"MC T={served} + temperature", served, True),
    ]


@dataclass
class ShiftEvaluation:
    """Every figure of the shift section; `conditions` starts with the clean split.

    A condition row: shift name ("clean" for none), intensity, the shift's
    parameter, `ood_fraction`, and per predictor name its metrics.
    """

    temperatures: dict[str, float]
    alpha: float | None
    served: str
    card_temperature: float = 1.0  # already in every MC row: the samples as served
    conditions: list[dict] = field(default_factory=list)
    ood_sets: dict[str, dict] = field(default_factory=dict)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)


def fit_temperatures(validation: SplitOutputs, labels: np.ndarray, served: int) -> dict[str, float]:
    """One temperature for the deterministic answer and one for MC at the served T,
    each fitted by NLL on the validation split."""
    return {
        "deterministic": fit_temperature(validation.deterministic[:, None], labels),
        "mc": fit_temperature(validation.samples[:, :served], labels),
    }


def set_calibrations(
    card: ModelCard,
    compared: list[Predictor],
    calibration: SplitOutputs,
    labels: np.ndarray,
    temperatures: dict[str, float],
) -> dict[str, ConformalCalibration]:
    """Per predictor, its prediction-set calibration: the card's own for the served
    predictor, else fitted the card's way on the calibration split outputs."""
    guarantees = card.guarantees
    if guarantees is None:
        return {}
    method, rng = guarantees.mc.sets.method, np.random.default_rng([0, 7])
    fitted = {}
    for predictor in compared:
        if predictor.samples == card.mc_samples and not predictor.tempered:
            fitted[predictor.name] = guarantees.mc.sets  # as served
            continue
        probs = mean_probabilities(predictor.read(calibration, temperatures))
        fitted[predictor.name] = ConformalCalibration.fit(probs, labels, method, rng)
    return fitted


def served_sets(probs: np.ndarray, sets: ConformalCalibration, alpha: float) -> np.ndarray:
    """Sets (N, C) as the service makes them (APS with u = 0)."""
    return prediction_sets(probs, sets, alpha, 0.0 if sets.method == "aps" else None)


def predictor_figures(
    samples: np.ndarray,
    labels: np.ndarray | None,
    sets: ConformalCalibration | None,
    alpha: float | None,
    accepted: np.ndarray | None,
) -> dict[str, float]:
    """One predictor on one condition, samples (N, T, C): accuracy, NLL, Brier, ECE and
    mean MI (with labels), coverage and set size (with a calibration), the fraction
    not accepted (with the rule's verdicts). OOD sets have no labels."""
    if labels is not None:
        row = summarize(samples, labels)
    else:
        row = {"mean_mutual_information": float(mutual_information(samples).mean())}
    row["mean_predictive_entropy"] = float(predictive_entropy(samples).mean())
    if sets is not None and alpha is not None:
        members = served_sets(mean_probabilities(samples), sets, alpha)  # (N, C)
        row["set_size"] = float(members.sum(axis=1).mean())
        if labels is not None:
            row["coverage"] = float(members[np.arange(len(labels)), labels].mean())
    if accepted is not None:
        row["uncertain_fraction"] = float(1.0 - accepted.mean())
    return row


@dataclass(frozen=True)
class Context:
    """What every condition is measured with: the predictors, their temperatures and
    set calibrations, the card (risk rule, OOD threshold) and the density."""

    card: ModelCard
    compared: list[Predictor]
    temperatures: dict[str, float]
    calibrations: dict[str, ConformalCalibration]
    density: OODScore | None

    @property
    def alpha(self) -> float | None:
        guarantees = self.card.guarantees
        return None if guarantees is None else guarantees.default_alpha

    def measure(self, outputs: SplitOutputs, labels: np.ndarray | None) -> dict:
        """`ood_fraction` and per predictor its figures, on one condition's outputs."""
        guarantees, threshold = self.card.guarantees, self.card.ood_threshold
        row: dict = {"ood_fraction": None, "predictors": {}}
        if self.density is not None and threshold is not None:
            scores = self.density.score(outputs.features)  # (N,)
            row["ood_fraction"] = float((scores > threshold).mean())
        for predictor in self.compared:
            samples = predictor.read(outputs, self.temperatures)
            accepted = None
            if guarantees is not None and predictor.samples and not predictor.tempered:
                accepted = guarantees.for_samples(predictor.samples).accepted(samples)
            sets = self.calibrations.get(predictor.name)
            row["predictors"][predictor.name] = predictor_figures(
                samples, labels, sets, self.alpha, accepted
            )
        return row


def prepare(
    predictor: MCDropoutPredictor, card: ModelCard, splits: Splits, density: OODScore | None,
    grid: tuple[int, ...], seed: int,
) -> Context:  # fmt: skip
    """Temperatures from the validation split, set calibrations from the calibration split."""
    prep, served = card.model.preprocessing, card.mc_samples
    compared = predictors(grid, served)
    validation = predictor_outputs(predictor, splits.validation.images, prep, served, seed)
    temperatures = fit_temperatures(validation, splits.validation.labels, served)
    calibrations: dict[str, ConformalCalibration] = {}
    if card.guarantees is not None and len(splits.calibration.labels) > 0:
        most = max(p.samples or 1 for p in compared)
        held = predictor_outputs(predictor, splits.calibration.images, prep, most, seed)
        calibrations = set_calibrations(
            card, compared, held, splits.calibration.labels, temperatures
        )
    return Context(card, compared, temperatures, calibrations, density)


def shift_evaluation(
    predictor: MCDropoutPredictor,
    context: Context,
    splits: Splits,
    ood_images: dict[str, list[np.ndarray]],
    seed: int,
    quick: bool = False,
    step: Callable[[str], None] = lambda description: None,
) -> ShiftEvaluation:
    """The clean test split, every shifted condition and each OOD set, measured for
    every predictor; `step` is told each stage before it runs (a progress bar)."""
    card, prep = context.card, context.card.model.preprocessing
    most = max(p.samples or 1 for p in context.compared)
    clean = keras.ops.convert_to_numpy(rgb_at_size(splits.test.images, prep))  # (N, H, W, 3)
    served = next(p.name for p in context.compared if p.samples == card.mc_samples)
    result = ShiftEvaluation(context.temperatures, context.alpha, served, card.temperature)
    for shift, intensity in [(None, 0), *conditions(quick)]:
        name = "clean" if shift is None else shift.name
        step(f"shift: {name} {intensity}")
        images = clean if shift is None else shift.apply(clean, intensity, seed)
        outputs = predictor_outputs(predictor, images, prep, most, seed)
        parameter = None if shift is None else shift.parameter(intensity)
        row = {"shift": name, "intensity": intensity, "parameter": parameter}
        result.conditions.append({**row, **context.measure(outputs, splits.test.labels)})
    for name, images in ood_images.items():
        step(f"shift: OOD set {name}")
        outputs = predictor_outputs(predictor, images, prep, most, seed)
        result.ood_sets[name] = context.measure(outputs, None)
    result.summary = summary(result.conditions, [p.name for p in context.compared])
    return result


def _mean(rows: list[dict], name: str, metric: str) -> float:
    return float(np.mean([row["predictors"][name][metric] for row in rows]))


def summary(rows: list[dict], names: list[str]) -> dict[str, dict[str, float]]:
    """Per predictor: each metric on the clean split and its mean over the rotation
    conditions, the corruption conditions and all shifted conditions together."""
    groups = {
        "clean": [r for r in rows if r["shift"] == "clean"],
        "rotation": [r for r in rows if r["shift"] == ROTATION.name],
        "corruptions": [r for r in rows if r["shift"] in {s.name for s in CORRUPTIONS}],
        "shifted": [r for r in rows if r["shift"] != "clean"],
    }
    return {
        name: {
            f"{group}_{metric}": _mean(members, name, metric)
            for group, members in groups.items() if members
            for metric in SUMMARY_METRICS
        }
        for name in names
    }  # fmt: skip
