"""Selective classification with a guaranteed risk: exact cases, invariants and validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.stats import binom

from models.selective import (
    RiskControl,
    binomial_p_value,
    calibrate_risk,
    choose_score,
    risk_coverage_curve,
    risk_upper_bound,
    smallest_certifiable_risk,
)


def _binomial_cdf(k: int, m: int, r: float) -> float:
    """P(Binomial(m, r) <= k), by hand."""
    return sum(math.comb(m, i) * r**i * (1 - r) ** (m - i) for i in range(k + 1))


def _reference_threshold(scores: list[float], wrong: list[bool], r: float, delta: float):
    """Fixed-sequence testing written out plainly: the last threshold of the leading passes."""
    chosen = None
    for t in sorted(set(scores)):
        m = sum(s <= t for s in scores)
        k = sum(w for s, w in zip(scores, wrong, strict=True) if s <= t)
        if (1 - r) ** m > delta:
            continue  # could not pass even with zero errors: not tested
        if _binomial_cdf(k, m, r) > delta:
            break
        chosen = t
    return chosen


# --- p-value and bound ------------------------------------------------------------------------


def test_p_value_hand_computed():
    assert binomial_p_value(0, 10, 0.2) == pytest.approx(0.8**10, rel=1e-12)
    # P(Bin(20, 0.1) <= 2) = 0.9^20 + 20 * 0.1 * 0.9^19 + 190 * 0.01 * 0.9^18
    by_hand = 0.9**20 + 20 * 0.1 * 0.9**19 + 190 * 0.01 * 0.9**18
    assert by_hand == pytest.approx(_binomial_cdf(2, 20, 0.1), rel=1e-12)
    assert binomial_p_value(2, 20, 0.1) == pytest.approx(by_hand, rel=1e-12)
    assert binomial_p_value(0, 0, 0.3) == 1.0  # nothing accepted proves nothing
    assert binomial_p_value(7, 7, 0.3) == 1.0


def test_upper_bound_hand_computed():
    # k = 0: P(Bin(m, u) <= 0) = (1 - u)^m = delta, so u = 1 - delta^(1/m).
    assert risk_upper_bound(0, 10, 0.05) == pytest.approx(1 - 0.05**0.1, rel=1e-12)
    # k > 0: the bound is where the hand-computed p-value equals delta.
    u = risk_upper_bound(3, 40, 0.05)
    assert _binomial_cdf(3, 40, u) == pytest.approx(0.05, rel=1e-9)
    assert risk_upper_bound(5, 5, 0.05) == 1.0  # m - k = 0 edge
    assert risk_upper_bound(0, 0, 0.05) == 1.0


@pytest.mark.parametrize("delta", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("risk", [0.01, 0.03, 0.1, 0.25])
def test_bound_below_target_iff_p_value_below_delta(risk, delta):
    checked = 0
    for m in range(0, 401, 7):
        for k in range(0, m + 1, max(1, m // 25)):
            p = binomial_p_value(k, m, risk)
            if math.isclose(p, delta, rel_tol=1e-9):
                continue  # on the boundary either answer is right
            assert (risk_upper_bound(k, m, delta) <= risk) == (p <= delta), (k, m)
            checked += 1
    assert checked > 500


def test_smallest_certifiable_risk():
    assert smallest_certifiable_risk(270) == pytest.approx(1 - 0.05 ** (1 / 270))
    assert smallest_certifiable_risk(270) == pytest.approx(-math.log(0.05) / 270, rel=0.01)
    assert binomial_p_value(0, 270, smallest_certifiable_risk(270)) == pytest.approx(0.05)


# --- the limit a small calibration split sets -------------------------------------------------


def test_270_images_cannot_certify_one_percent_but_can_two():
    scores, correct = np.linspace(0, 1, 270), np.ones(270, dtype=bool)
    one = calibrate_risk(scores, correct, target_risk=0.01)  # 0.99^270 = 0.066 > 0.05
    assert one.threshold is None
    assert (
        one.reason == "with 270 calibration images no risk below 1.1 % can be certified at δ=0.05"
    )
    assert one.accepted_fraction == 0.0
    assert not one.accepts(scores).any()
    two = calibrate_risk(scores, correct, target_risk=0.02)  # 0.98^270 = 0.0043 <= 0.05
    assert two.threshold == 1.0
    assert two.accepted_fraction == 1.0
    assert two.accepted_error_rate == 0.0
    assert two.risk_bound == pytest.approx(smallest_certifiable_risk(270))
    assert two.accepts(scores).all()


# --- fixed-sequence behaviour -----------------------------------------------------------------


def test_errors_at_high_scores_give_the_expected_threshold():
    scores = np.arange(1.0, 101.0)
    correct = scores <= 90  # the ten least sure are wrong
    # t = 94: 94 accepted, 4 wrong: P(Bin(94, 0.1) <= 4) = 0.033 <= 0.05, passes;
    # t = 95: 95 accepted, 5 wrong: P(Bin(95, 0.1) <= 5) = 0.068 > 0.05, stops.
    assert _binomial_cdf(4, 94, 0.1) <= 0.05 < _binomial_cdf(5, 95, 0.1)
    control = calibrate_risk(scores, correct, target_risk=0.1)
    assert control.threshold == 94.0
    assert control.accepted_fraction == 0.94
    assert control.accepted_error_rate == pytest.approx(4 / 94)
    assert control.risk_bound == pytest.approx(risk_upper_bound(4, 94, 0.05))
    assert control.risk_bound <= 0.1
    assert control.reason is None


def test_the_sequence_stops_at_its_first_failure():
    scores = np.arange(1.0, 151.0)
    correct = ~((scores >= 31) & (scores <= 35))  # five errors just after the first 30
    # t = 30 passes (0.9^30 = 0.042); t = 31 fails (p = 0.17); accepting all 150 would
    # pass again (p = 0.002) but is never tested: that is what makes the guarantee hold.
    assert binomial_p_value(5, 150, 0.1) <= 0.05
    control = calibrate_risk(scores, correct, target_risk=0.1)
    assert control.threshold == 30.0
    assert control.accepted_fraction == pytest.approx(0.2)


def test_too_few_confident_images_are_skipped_not_failed():
    # 0.9^28 = 0.052 > 0.05: thresholds accepting fewer than 29 images are not tested.
    scores, correct = np.arange(1.0, 41.0), np.ones(40, dtype=bool)
    assert calibrate_risk(scores, correct, 0.1).threshold == 40.0
    correct[4] = False  # an error among the 29 most confident: the first test fails
    control = calibrate_risk(scores, correct, 0.1)
    assert control.threshold is None
    assert control.reason is not None
    assert control.reason.startswith("the 29 most confident calibration images")
    assert "hold 1 errors" in control.reason


def test_tied_scores_are_accepted_together():
    scores = np.repeat([0.1, 0.2, 0.3], 100)
    correct = np.ones(300, dtype=bool)
    correct[250:] = False  # half of the 0.3 group is wrong
    control = calibrate_risk(scores, correct, target_risk=0.05)
    assert control.threshold == 0.2
    assert control.accepts(scores).sum() == 200


def test_matches_a_plain_reference_implementation():
    rng = np.random.default_rng(7)
    for _ in range(30):
        n = int(rng.integers(20, 200))
        scores = np.round(rng.uniform(0, 1, n), 2)  # rounded: plenty of ties
        wrong = rng.uniform(0, 1, n) < 0.25 * scores
        risk = float(rng.choice([0.05, 0.1, 0.2]))
        expected = _reference_threshold(scores.tolist(), wrong.tolist(), risk, 0.05)
        assert calibrate_risk(scores, ~wrong, risk).threshold == expected


# --- validity by simulation -------------------------------------------------------------------
# Synthetic model: score ~ U(0, 1), P(wrong | score = s) = a s^p, so the true risk of
# "accept iff score <= t" is a t^p / (p + 1). Each case: (a, p, the largest safe t at 5 %,
# the least fraction of draws that should certify something).
# Cubic: early errors are rare, the sequence runs close to the largest safe t, so the
# violation rate comes near delta (3 %): the stringent case. Linear: an error among the
# ~59 most confident images, the first tested, ends the sequence, so only ~70 % of draws
# certify anything (fixed-sequence testing's known weakness); the guarantee still holds.

TARGET, DELTA, DRAWS, N = 0.05, 0.05, 400, 1000
CASES = [(0.3, 3, (2 / 3) ** (1 / 3), 0.95), (0.2, 1, 0.5, 0.5)]


def _draw(rng: np.random.Generator, n: int, a: float, p: int) -> tuple[np.ndarray, np.ndarray]:
    scores = rng.uniform(0, 1, n)
    return scores, rng.uniform(0, 1, n) >= a * scores**p  # correct


def _fresh_risk(rng: np.random.Generator, a: float, p: int, size: int = 2_000_000):
    """Risk of each threshold, measured on one large fresh sample of the same distribution."""
    scores, correct = _draw(rng, size, a, p)
    order = np.argsort(scores)
    ranked, wrong = scores[order], np.cumsum(~correct[order])

    def risk(t: float) -> float:
        accepted = int(np.searchsorted(ranked, t, side="right"))
        return wrong[accepted - 1] / accepted

    return risk


@pytest.mark.parametrize(("a", "p", "safe", "certifying"), CASES)
def test_guarantee_holds_by_simulation(a, p, safe, certifying):
    rng = np.random.default_rng(20210901)
    true_risk = _fresh_risk(rng, a, p)
    assert true_risk(safe) == pytest.approx(TARGET, abs=1e-3)  # the sample matches the formula
    chosen, naive = [], []
    for _ in range(DRAWS):
        scores, correct = _draw(rng, N, a, p)
        chosen.append(calibrate_risk(scores, correct, TARGET, DELTA).threshold)
        _, risk, thresholds = risk_coverage_curve(scores, correct)
        naive.append(thresholds[np.flatnonzero(risk <= TARGET)[-1]])
    violated = np.mean([t is not None and true_risk(t) > TARGET for t in chosen])
    # Tolerance: were the violation probability exactly DELTA, the number of violations in
    # DRAWS draws would exceed binom.ppf(0.999, 400, 0.05) = 35 (8.75 %) once in 1000 runs.
    tolerance = binom.ppf(0.999, DRAWS, DELTA) / DRAWS - DELTA
    assert violated <= DELTA + tolerance
    assert np.mean([t is not None for t in chosen]) >= certifying
    # Able to fail: keeping the largest threshold whose calibration risk is <= 5 % violates
    # the target about half the time, far beyond the same tolerance.
    assert np.mean([true_risk(t) > TARGET for t in naive]) > DELTA + tolerance + 0.2


# --- choosing among scores --------------------------------------------------------------------


def test_choose_score_picks_the_larger_certified_coverage():
    rng = np.random.default_rng(3)
    correct = np.ones(1000, dtype=bool)
    correct[rng.choice(1000, 60, replace=False)] = False
    sharp = np.where(correct, rng.uniform(0, 0.5, 1000), rng.uniform(0.4, 1, 1000))
    blunt = np.where(correct, rng.uniform(0, 0.8, 1000), rng.uniform(0, 1, 1000))
    alone = {
        name: calibrate_risk(s, correct, 0.03, 0.025) for name, s in [("a", sharp), ("b", blunt)]
    }
    assert alone["a"].accepted_fraction > alone["b"].accepted_fraction
    for scores in ({"blunt": blunt, "sharp": sharp}, {"sharp": sharp, "blunt": blunt}):
        chosen = choose_score(scores, correct, target_risk=0.03)
        assert chosen.score == "sharp"
        assert chosen.compared_scores == 2
        assert chosen.delta == 0.05
        assert chosen.tested_delta == 0.025
        assert chosen.accepted_fraction == alone["a"].accepted_fraction


def test_choose_score_ties_go_to_the_first_given():
    scores, correct = np.linspace(0, 1, 400), np.ones(400, dtype=bool)
    assert choose_score({"x": scores, "y": scores}, correct, 0.05).score == "x"
    assert choose_score({"y": scores, "x": scores}, correct, 0.05).score == "y"


def test_choose_score_tests_each_at_delta_over_k():
    # 0.98^150 = 0.048: certified at delta = 0.05 alone, not at 0.05 / 2.
    scores, correct = np.linspace(0, 1, 150), np.ones(150, dtype=bool)
    assert calibrate_risk(scores, correct, 0.02).threshold == 1.0
    chosen = choose_score({"a": scores, "b": scores[::-1].copy()}, correct, 0.02)
    assert chosen.threshold is None
    assert chosen.reason is not None
    assert "δ=0.025 (δ=0.05 shared by 2 scores)" in chosen.reason


# --- the saved rule ---------------------------------------------------------------------------


def test_round_trips_through_json_and_is_frozen():
    scores = np.random.default_rng(1).uniform(0, 1, 500).astype(np.float32)
    control = calibrate_risk(scores, np.ones(500, dtype=bool), 0.02, name="epistemic")
    again = RiskControl.model_validate_json(control.model_dump_json())
    assert again == control
    np.testing.assert_array_equal(again.accepts(scores), control.accepts(scores))
    with pytest.raises(ValidationError):
        control.threshold = 0.0  # type: ignore[misc]


def test_accepts():
    control = calibrate_risk(np.arange(1.0, 101.0), np.ones(100, dtype=bool), 0.1)
    assert control.threshold == 100.0
    mask = control.accepts(np.array([[0.5, 100.0], [100.5, np.nan]]))
    np.testing.assert_array_equal(mask, [[True, True], [False, False]])
    nothing = control.model_copy(update={"threshold": None, "risk_bound": None, "reason": "x"})
    assert not nothing.accepts(np.array([-1e9, 0.0])).any()


def test_a_rule_without_threshold_needs_a_reason():
    fields = {"score": "s", "target_risk": 0.1, "delta": 0.05, "calibration_size": 10}
    counts = {"accepted_fraction": 0.0, "accepted_error_rate": 0.0, "risk_bound": None}
    with pytest.raises(ValidationError, match="reason"):
        RiskControl(**fields, **counts, threshold=None, reason=None)


def test_risk_coverage_curve_hand_computed():
    coverage, risk, thresholds = risk_coverage_curve(
        np.array([0.3, 0.1, 0.2, 0.2]), np.array([False, True, True, False])
    )
    np.testing.assert_array_equal(thresholds, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(coverage, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 3, 0.5])


# --- bad inputs -------------------------------------------------------------------------------

GOOD_SCORES, GOOD_CORRECT = np.linspace(0, 1, 10), np.ones(10, dtype=bool)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"correct": np.ones(9, dtype=bool)}, "expected one flag per score (10)"),
        ({"scores": np.array([]), "correct": np.array([])}, "expected a non-empty 1-D array"),
        ({"scores": np.ones((2, 5))}, "expected a non-empty 1-D array"),
        ({"scores": np.r_[np.nan, np.ones(9)]}, "expected finite numbers"),
        ({"correct": np.full(10, 0.5)}, "expected booleans"),
        ({"target_risk": 0.0}, "expected 0 < target_risk < 1, received target_risk=0.0"),
        ({"target_risk": 1.5}, "expected 0 < target_risk < 1, received target_risk=1.5"),
        ({"target_risk": float("nan")}, "received target_risk=nan"),
        ({"delta": 1.0}, "expected 0 < delta < 1, received delta=1.0"),
        ({"delta": -0.1}, "expected 0 < delta < 1, received delta=-0.1"),
    ],
)
def test_bad_inputs_raise_clearly(kwargs, message):
    arguments = {"scores": GOOD_SCORES, "correct": GOOD_CORRECT, "target_risk": 0.1}
    with pytest.raises(ValueError, match=r"^Invalid value for `") as raised:
        calibrate_risk(**{**arguments, **kwargs})
    assert message in str(raised.value)


def test_bad_counts_and_empty_choice_raise():
    with pytest.raises(ValueError, match="expected 0 <= errors <= accepted"):
        binomial_p_value(5, 3, 0.1)
    with pytest.raises(ValueError, match="expected 0 < risk < 1"):
        binomial_p_value(0, 3, 1.0)
    with pytest.raises(ValueError, match="expected 0 < delta < 1"):
        risk_upper_bound(0, 3, 0.0)
    with pytest.raises(ValueError, match="expected at least one named score"):
        choose_score({}, GOOD_CORRECT, 0.1)
    with pytest.raises(ValueError, match="expected one flag per score"):
        choose_score({"a": GOOD_SCORES}, GOOD_CORRECT[:5], 0.1)
