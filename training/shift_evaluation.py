"""`uqserve evaluate --shift`: does each predictor's uncertainty hold as the test split moves?

After Ovadia et al. (2019): the test split under every shift of
`training.shifts` (rotation, noise, blur, contrast, translation), and the OOD
image sets, for each predictor:

- `deterministic`: dropout off;
- `deterministic + temperature`: one temperature fitted by NLL on the
  validation split (Guo et al. 2017), the standard post-hoc baseline;
- `MC T=t` for each t of the grid above 1: the mean of t dropout samples;
- `MC T=<served> + temperature`: the model's own T, each sample tempered by
  one temperature fitted on the validation split, or by the card's own when
  the model serves one (then this row is the served answer).

Each condition runs the deterministic part once and draws the largest T once;
smaller T read the first samples, so all predictors see the same masks.
The MC samples are drawn untempered (an untempered predictor is passed in).
Prediction sets at the card's default alpha: the served predictor uses the
card's stored calibration; every other predictor is calibrated the same way
(the card's method) on the calibration split, which nothing else uses.
`ood_fraction` (feature density above the card's threshold) does not depend
on the predictor; `uncertain_fraction` (answers the card's risk rule does not
accept) is given for the MC predictors tempered as served, the ones that rule
was calibrated for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from models.card import ModelCard
from models.conformal import ConformalCalibration, coverage, served_prediction_sets
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
    card_temperature: float = 1.0  # the served temperature (1: none): `temperatures["mc"]` then
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


def served_name(card: ModelCard) -> str:
    """The compared predictor that is the served answer: MC at the card's T, tempered
    when the card has a temperature."""
    tempered = " + temperature" if card.temperature != 1.0 else ""
    return f"MC T={card.mc_samples}{tempered}"


def set_calibrations(
    card: ModelCard,
    compared: list[Predictor],
    calibration: SplitOutputs,
    labels: np.ndarray,
    temperatures: dict[str, float],
    seed: int,
) -> dict[str, ConformalCalibration]:
    """Per predictor, its prediction-set calibration: the card's own for the served
    predictor, else fitted the card's way on the calibration split outputs (APS's u
    from its own stream (seed, 7, index))."""
    guarantees = card.guarantees
    if guarantees is None:
        return {}
    fitted = {}
    for index, predictor in enumerate(compared):
        if predictor.name == served_name(card):
            fitted[predictor.name] = guarantees.mc.sets  # as served
            continue
        probs = mean_probabilities(predictor.read(calibration, temperatures))
        rng = np.random.default_rng([seed, 7, index])
        fitted[predictor.name] = ConformalCalibration.fit(
            probs, labels, guarantees.mc.sets.method, rng
        )
    return fitted


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
        members = served_prediction_sets(mean_probabilities(samples), sets, alpha)  # (N, C)
        row["set_size"] = float(members.sum(axis=1).mean())
        if labels is not None:
            row["coverage"] = coverage(members, labels)
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
        as_served = self.card.temperature != 1.0  # the rule was calibrated on these samples
        for predictor in self.compared:
            samples = predictor.read(outputs, self.temperatures)
            accepted = None
            if guarantees is not None and predictor.samples and predictor.tempered == as_served:
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
    """Temperatures from the validation split, set calibrations from the calibration split.

    `predictor` gives untempered samples. A card with a temperature is served
    tempered by it: that is then the MC temperature compared, not a refit.
    """
    prep, served = card.model.preprocessing, card.mc_samples
    compared = predictors(grid, served)
    validation = predictor_outputs(predictor, splits.validation.images, prep, served, seed)
    temperatures = fit_temperatures(validation, splits.validation.labels, served)
    if card.temperature != 1.0:
        temperatures["mc"] = card.temperature
    calibrations: dict[str, ConformalCalibration] = {}
    if card.guarantees is not None and len(splits.calibration.labels) > 0:
        most = max(p.samples or 1 for p in compared)
        held = predictor_outputs(predictor, splits.calibration.images, prep, most, seed)
        calibrations = set_calibrations(
            card, compared, held, splits.calibration.labels, temperatures, seed
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
    result = ShiftEvaluation(
        context.temperatures, context.alpha, served_name(card), card.temperature
    )
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
