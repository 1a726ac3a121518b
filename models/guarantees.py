"""What the calibration split buys a user: sets that hold the true class, answers safe to accept.

Calibrated once at training, on a split used for nothing else, and stored
with the model (in its card):

- **prediction sets** (`models.conformal`): for any alpha, a set of classes
  that holds the true one with probability >= 1 - alpha;
- **acceptance** (`models.selective`): an answer is accepted when its
  uncertainty score is at most a threshold chosen so that, among accepted
  answers, at most `target_risk` are wrong, with probability >= 1 - delta.

Both hold marginally (on average over images) for images exchangeable with
the calibration split: same source, same classes; not per class, not under
distribution shift. Each is calibrated twice: for the predictive
distribution at the model's default T (`mc`) and for one dropout sample
(`single`, T = 1); a request with another T uses `mc` (close, not exact).

    samples (n, T, C) -> uncertainty scores (n,) per name -> sets (n, C), accepted (n,)
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from models import uncertainty
from models.config import Frozen
from models.conformal import (
    ConformalCalibration,
    Method,
    coverage,
    served_prediction_sets,
)
from models.selective import RiskControl, choose_score

REPORTED_ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2)  # test coverage and set size recorded at these


SCORES = ("mutual_information", "predictive_entropy", "one_minus_max_probability")


def uncertainty_score(name: str, samples: np.ndarray) -> np.ndarray:
    """One candidate acceptance score of samples (n, T, C) -> (n,), higher = less sure."""
    if name == "mutual_information":
        return uncertainty.mutual_information(samples)
    if name == "predictive_entropy":
        return uncertainty.predictive_entropy(samples)
    if name == "one_minus_max_probability":
        return 1.0 - uncertainty.mean_probabilities(samples).max(axis=1)
    raise ValueError(f"Invalid value for `name`: expected one of {SCORES}, received name={name!r}")


def uncertainty_scores(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Every candidate acceptance score of samples (n, T, C), each (n,)."""
    return {name: uncertainty_score(name, samples) for name in SCORES}


class Calibrated(Frozen):
    """Sets and acceptance for one predictive distribution (T samples), with test figures."""

    samples: int = Field(ge=1, description="T this was calibrated at.")
    sets: ConformalCalibration
    risk: RiskControl
    test: dict[str, float] = Field(
        default_factory=dict, description="Measured on the test split: coverage and set size "
        "per alpha, accepted fraction and accepted error rate.",
    )  # fmt: skip

    def served_sets(self, probs: np.ndarray, alpha: float) -> np.ndarray:
        """Prediction sets (n, C) bool of probabilities (n, C), as the service answers them.

        APS is calibrated randomized but served with u = 0 (the class that
        crosses the threshold is kept): supersets of the randomized sets, so
        coverage stays >= 1 - alpha whatever seed a client sends again.
        """
        return served_prediction_sets(probs, self.sets, alpha)

    def accepted(self, samples: np.ndarray) -> np.ndarray:
        """samples (n, T, C) -> accepted (n,) bool: the rule's own score only."""
        return self.risk.accepts(uncertainty_score(self.risk.score, samples))

    def answer(self, samples: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """samples (n, T, C) -> prediction sets (n, C) bool, accepted (n,) bool, as served."""
        probs = uncertainty.mean_probabilities(samples)  # (n, C)
        return self.served_sets(probs, alpha), self.accepted(samples)


class Guarantees(Frozen):
    """Both calibrations of a model and the alpha a request gets by default."""

    default_alpha: float = Field(gt=0.0, lt=1.0)
    mc: Calibrated
    single: Calibrated

    @model_validator(mode="after")
    def _consistent(self) -> Guarantees:
        """Both calibrations from one split and one method, the default alpha answerable."""
        mc, single = self.mc.sets, self.single.sets
        if (mc.n, mc.method) != (single.n, single.method):
            raise ValueError(
                "mc and single calibrations must share n and method, received "
                f"{(mc.n, mc.method)} and {(single.n, single.method)}"
            )
        if self.default_alpha < mc.alpha_range[0]:
            raise ValueError(
                f"Invalid value for `default_alpha`: expected >= 1/(n+1)={mc.alpha_range[0]}, "
                f"received default_alpha={self.default_alpha}"
            )
        return self

    def for_samples(self, samples: int) -> Calibrated:
        """The calibration a request with T = `samples` is answered with."""
        return self.single if samples == 1 else self.mc

    def summary(self) -> dict[str, object]:
        """What GET /metadata shows: method, n, alpha range, risk rule and test figures
        per calibration (the calibration scores themselves stay in the card)."""

        def one(calibrated: Calibrated) -> dict[str, object]:
            return {"samples": calibrated.samples, "test": calibrated.test,
                    "acceptance": calibrated.risk.model_dump()}  # fmt: skip

        sets = self.mc.sets
        return {
            "method": sets.method,
            "calibration_size": sets.n,
            "default_alpha": self.default_alpha,
            "alpha_range": [sets.alpha_range[0], 1.0],
            "mc": one(self.mc),
            "single": one(self.single),
        }


def calibrate(
    samples: np.ndarray,
    labels: np.ndarray,
    method: Method,
    target_risk: float,
    delta: float,
    rng: np.random.Generator,
) -> Calibrated:
    """Calibrate on held-out samples (n, T, C) with their labels (n,).

    The acceptance score is chosen among `uncertainty_scores` by certified
    coverage (each tested at delta / 3, so the choice keeps the guarantee).
    """
    probs = uncertainty.mean_probabilities(samples)  # (n, C)
    sets = ConformalCalibration.fit(probs, labels, method, rng if method == "aps" else None)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    risk = choose_score(uncertainty_scores(samples), correct, target_risk, delta)
    return Calibrated(samples=samples.shape[1], sets=sets, risk=risk)


def measure(calibrated: Calibrated, samples: np.ndarray, labels: np.ndarray) -> Calibrated:
    """`calibrated` with the served answer's figures on the test split (samples (n, T, C),
    labels (n,))."""
    probs = uncertainty.mean_probabilities(samples)  # (n, C)
    labels = np.asarray(labels)
    figures: dict[str, float] = {}
    low = calibrated.sets.alpha_range[0]
    for alpha in (a for a in REPORTED_ALPHAS if a >= low):
        members = calibrated.served_sets(probs, alpha)
        figures[f"coverage@{alpha:g}"] = coverage(members, labels)
        figures[f"set_size@{alpha:g}"] = float(members.sum(axis=1).mean())
    accepted = calibrated.accepted(samples)
    wrong = probs.argmax(axis=1) != labels
    figures["accepted_fraction"] = float(accepted.mean())
    figures["accepted_error_rate"] = float(wrong[accepted].mean()) if accepted.any() else 0.0
    return calibrated.model_copy(update={"test": figures})
