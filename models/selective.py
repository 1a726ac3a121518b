"""Selective classification with a guaranteed risk: answer only when the score is low enough.

On a calibration split used for nothing else we have, per image, an uncertainty
score (higher = less sure: mutual information, predictive entropy, 1 - max
probability, ...) and whether the model's answer was correct. `calibrate_risk`
chooses a threshold t (accept an image iff its score <= t) such that the error
rate among accepted images is at most `target_risk` with probability at least
1 - delta over the calibration draw, by Learn-then-Test (Angelopoulos et al.
2021) with fixed-sequence testing:

    candidates   the distinct calibration scores, most conservative (fewest accepted) first
    hypothesis   H0(t): risk(t) > target_risk, risk(t) = P(wrong | score <= t)
    p-value      P(Binomial(m, target_risk) <= k), m accepted, k wrong among them
    rule         go on while p <= delta; the threshold is the last one that passed

A small calibration split limits what can be certified: with n images, even
all n accepted and none wrong give p = (1 - r)^n, so no risk r below
1 - delta^(1/n) ~ -ln(delta)/n (about 3/n at delta = 0.05) can be certified;
see `smallest_certifiable_risk`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.stats import beta, binom

DEFAULT_DELTA = 0.05
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class RiskControl(BaseModel):
    """A certified acceptance rule: accept an image iff its `score` <= `threshold`.

    Saved in the model card as JSON. `threshold` None means no threshold could
    be certified, so nothing is accepted; `reason` then says why. The accepted
    fraction, error rate and risk bound are measured on the calibration split.
    `delta` is the whole guarantee's: when `compared_scores` k > 1 scores were
    compared to choose this one (`choose_score`), each was tested at delta / k.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: str = Field(description="Name of the uncertainty score (higher = less sure).")
    target_risk: Probability = Field(description="Largest error rate allowed among accepted.")
    delta: Probability = Field(description="Allowed probability that the guarantee fails.")
    compared_scores: int = Field(1, ge=1, description="Scores compared; each tested at delta/k.")
    threshold: float | None = Field(description="Accept iff score <= threshold; None: none.")
    calibration_size: int = Field(ge=1, description="Calibration images.")
    accepted_fraction: Fraction = Field(description="Calibration images accepted.")
    accepted_error_rate: Fraction = Field(description="Error rate among those (0 if none).")
    risk_bound: Fraction | None = Field(
        description="Clopper-Pearson upper bound on the accepted risk at the tested delta."
    )
    reason: str | None = Field(description="Why nothing was certified (None if something was).")

    @model_validator(mode="after")
    def _reason_iff_no_threshold(self) -> RiskControl:
        if (self.threshold is None) != (self.reason is not None):
            raise ValueError("expected a reason exactly when threshold is None")
        if (self.threshold is None) != (self.risk_bound is None):
            raise ValueError("expected a risk_bound exactly when a threshold is set")
        return self

    @property
    def tested_delta(self) -> float:
        """The delta each compared score was tested at (Bonferroni: delta / compared_scores)."""
        return self.delta / self.compared_scores

    def accepts(self, scores: np.ndarray) -> np.ndarray:
        """Boolean mask, same shape as `scores`: True where the model should answer.

        All False when no threshold was certified; a NaN score is never accepted.
        """
        values = np.asarray(scores, dtype=np.float64)
        if self.threshold is None:
            return np.zeros(values.shape, dtype=bool)
        return values <= self.threshold


def binomial_p_value(errors: int, accepted: int, risk: float) -> float:
    """Exact p-value of H0: risk > `risk`, having seen `errors` wrong among `accepted`.

    P(Binomial(accepted, risk) <= errors): how likely so few errors would be if
    the true risk were `risk` (the worst case of H0). Nothing accepted gives 1.
    """
    errors, accepted = _counts(errors, accepted)
    _check_probability("risk", risk)
    return float(binom.cdf(errors, accepted, risk))


def risk_upper_bound(errors: int, accepted: int, delta: float = DEFAULT_DELTA) -> float:
    """One-sided Clopper-Pearson upper bound on the risk, holding with probability 1 - delta.

    The bound u solves P(Binomial(accepted, u) <= errors) = delta, so
    u <= r exactly when `binomial_p_value(errors, accepted, r)` <= delta: it
    reports the same test as a number. With every accepted image wrong (or
    none accepted) the bound is 1.
    """
    errors, accepted = _counts(errors, accepted)
    _check_probability("delta", delta)
    if accepted - errors == 0:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, accepted - errors))


def smallest_certifiable_risk(calibration_size: int, delta: float = DEFAULT_DELTA) -> float:
    """The risk below which nothing can be certified with this many calibration images.

    The best possible evidence is all n images accepted and none wrong, with
    p-value (1 - r)^n; it is <= delta only for r >= 1 - delta^(1/n), about
    -ln(delta)/n (3/n at delta = 0.05: 270 images cannot certify 1 %).
    """
    n = operator.index(calibration_size)
    if n < 1:
        raise ValueError(
            f"Invalid value for `calibration_size`: expected a positive integer, received {n}"
        )
    _check_probability("delta", delta)
    return -math.expm1(math.log(delta) / n)


def risk_coverage_curve(
    scores: np.ndarray, correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score t (ascending): accepted fraction, error rate among accepted, t.

    Accepting iff score <= t, as `RiskControl.accepts` does; for plots and tables.
    """
    thresholds, accepted, errors = _sequence(*_calibration_arrays(scores, correct))
    return accepted / accepted[-1], errors / accepted, thresholds


def calibrate_risk(
    scores: np.ndarray,
    correct: np.ndarray,
    target_risk: float,
    delta: float = DEFAULT_DELTA,
    name: str = "uncertainty",
) -> RiskControl:
    """The largest-coverage threshold certified by fixed-sequence testing (module docstring).

    No multiplicity correction is needed although many thresholds are tested:
    the order is fixed without looking at which answers were wrong, and testing
    stops at the first failure. A false certification therefore requires
    rejecting the first true H0 in the order (everything before it is a false
    H0, everything after it is reached only by rejecting it), which happens
    with probability <= delta, so the family-wise error is <= delta.

    Candidates accepting too few images to pass even with zero errors are
    skipped: they can never pass and would end every sequence at its first
    step. Which ones those are depends on the scores only, not on correctness.
    The candidates are the calibration scores themselves (as in Geifman &
    El-Yaniv 2017) rather than a grid fixed in advance; the simulation tests
    check that the guarantee still holds.
    """
    values, wrong = _calibration_arrays(scores, correct)
    _check_probability("target_risk", target_risk)
    _check_probability("delta", delta)
    return _calibrate(values, wrong, float(target_risk), float(delta), name, 1)


def choose_score(
    scores: Mapping[str, np.ndarray],
    correct: np.ndarray,
    target_risk: float,
    delta: float = DEFAULT_DELTA,
) -> RiskControl:
    """Calibrate each named score and keep the one certifying the largest accepted fraction.

    Ties go to the score given first. The choice is made on the calibration
    split itself, so the guarantee must hold for all k scores at once: each is
    tested at delta / k (Bonferroni), and the chosen rule's risk is then
    <= `target_risk` with probability >= 1 - delta.
    """
    if not scores:
        raise ValueError(
            "Invalid value for `scores`: expected at least one named score, received none"
        )
    _check_probability("target_risk", target_risk)
    _check_probability("delta", delta)
    controls = [
        _calibrate(*_calibration_arrays(values, correct), target_risk, delta, name, len(scores))
        for name, values in scores.items()
    ]
    return max(controls, key=lambda control: control.accepted_fraction)  # first of equals


def _calibrate(
    scores: np.ndarray, wrong: np.ndarray, risk: float, delta: float, name: str, compared: int
) -> RiskControl:
    """Fixed-sequence testing at delta / compared; inputs already validated."""
    tested = delta / compared
    thresholds, accepted, errors = _sequence(scores, wrong)
    n = len(scores)
    common = {"score": name, "target_risk": risk, "delta": delta, "compared_scores": compared}
    last = _last_passed(accepted, errors, risk, tested)
    if last is None:
        return _uncertified(common, n, _why_nothing(accepted, errors, risk, delta, compared))
    m, k = int(accepted[last]), int(errors[last])
    return RiskControl(
        **common,
        threshold=float(thresholds[last]),
        calibration_size=n,
        accepted_fraction=m / n,
        accepted_error_rate=k / m,
        risk_bound=risk_upper_bound(k, m, tested),
        reason=None,
    )


def _first_testable(accepted: np.ndarray, risk: float, delta: float) -> int | None:
    """Index of the first candidate that zero errors would certify (None: none would)."""
    testable = np.flatnonzero(binom.cdf(0, accepted, risk) <= delta)
    return int(testable[0]) if testable.size else None


def _last_passed(accepted: np.ndarray, errors: np.ndarray, risk: float, delta: float) -> int | None:
    """Index of the last candidate of the leading run of passes (None: the first failed)."""
    start = _first_testable(accepted, risk, delta)
    if start is None:
        return None
    passed = binom.cdf(errors[start:], accepted[start:], risk) <= delta
    run = passed.size if passed.all() else int(np.argmin(passed))  # leading passes
    return start + run - 1 if run else None


def _why_nothing(
    accepted: np.ndarray, errors: np.ndarray, risk: float, delta: float, compared: int
) -> str:
    """Human-readable reason no threshold was certified."""
    tested, n = delta / compared, int(accepted[-1])
    start = _first_testable(accepted, risk, tested)
    if start is None:
        floor = _percent(smallest_certifiable_risk(n, tested))
        return f"with {n} calibration images no risk below {floor} can be certified at " + (
            _delta_text(delta, compared)
        )
    m, k = int(accepted[start]), int(errors[start])
    bound = _percent(risk_upper_bound(k, m, tested))
    return (
        f"the {m} most confident calibration images, the fewest that could certify "
        f"{_percent(risk)}, hold {k} errors: risk bound {bound} at {_delta_text(delta, compared)}"
    )


def _uncertified(common: dict[str, object], n: int, reason: str) -> RiskControl:
    """The accept-nothing rule, with the reason why."""
    return RiskControl.model_validate(
        {
            **common,
            "threshold": None,
            "calibration_size": n,
            "accepted_fraction": 0.0,
            "accepted_error_rate": 0.0,
            "risk_bound": None,
            "reason": reason,
        }
    )


def _sequence(scores: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores ascending, with images accepted and errors among them at each."""
    order = np.argsort(scores, kind="stable")
    thresholds, counts = np.unique(scores[order], return_counts=True)
    accepted = np.cumsum(counts)
    errors = np.cumsum(wrong[order])[accepted - 1]
    return thresholds, accepted, errors


def _calibration_arrays(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 scores and integer 'wrong' flags (1 = the answer was wrong)."""
    values = np.asarray(scores)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(
            "Invalid value for `scores`: expected a non-empty 1-D array of numbers, "
            f"received shape {values.shape} of dtype {values.dtype}"
        )
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("Invalid value for `scores`: expected finite numbers, received NaN or inf")
    flags = np.asarray(correct)
    if flags.ndim != 1 or flags.size != values.size:
        raise ValueError(
            f"Invalid value for `correct`: expected one flag per score ({values.size}), "
            f"received shape {flags.shape}"
        )
    if flags.dtype != bool and not np.isin(flags, (0, 1)).all():
        raise ValueError("Invalid value for `correct`: expected booleans (or 0/1)")
    return values, 1 - flags.astype(np.int64)


def _counts(errors: int, accepted: int) -> tuple[int, int]:
    """Validated (errors, accepted): integers with 0 <= errors <= accepted."""
    errors, accepted = operator.index(errors), operator.index(accepted)
    if not 0 <= errors <= accepted:
        raise ValueError(
            "Invalid value for `errors`: expected 0 <= errors <= accepted, "
            f"received errors={errors}, accepted={accepted}"
        )
    return errors, accepted


def _check_probability(argument: str, value: float) -> None:
    """Raise unless 0 < value < 1 (NaN and booleans included)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not 0 < value < 1
    ):
        raise ValueError(
            f"Invalid value for `{argument}`: expected 0 < {argument} < 1, "
            f"received {argument}={value!r}"
        )


def _percent(value: float) -> str:
    return f"{100 * value:.2g} %"


def _delta_text(delta: float, compared: int) -> str:
    if compared == 1:
        return f"δ={delta:g}"
    return f"δ={delta / compared:g} (δ={delta:g} shared by {compared} scores)"
