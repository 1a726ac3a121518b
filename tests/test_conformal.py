"""Split-conformal sets (models.conformal): scores by hand, quantile indexing, coverage, MAPIE.

The cross-check runs MAPIE's SplitConformalClassifier on the same probabilities
(through a prefit estimator that only looks them up) and requires the same sets.
MAPIE's conventions, read from mapie 1.6's source, and how they map:

- quantile: ceil((n+1)(1-alpha))/n with numpy's "lower" method, i.e. the same
  k-th smallest score, but with no float snapping (n=8, alpha=1/3 gives its 7th,
  our 6th) and only for 1/n <= alpha <= 1-1/n: the alphas below keep
  (n+1)(1-alpha) well away from integers, inside that range;
- sets: LAC keeps 1 - p_c - q <= 1e-8, ours <= q: the scores here are
  continuous, so none fall in that sliver (other than a calibration row's own
  score at q, which both keep);
- APS calibration is always randomized, cumsum_through_y - U * p_y with
  U = RandomState(seed).uniform(n): ours with u = 1 - U;
- APS sets: include_last_label=True (its default) is ours with u = 0;
  "randomized" is ours with u = 1 - RandomState(seed).uniform(B); False is ours
  with u = None, except that MAPIE then puts the top class into a set we leave empty.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from mapie.classification import SplitConformalClassifier  # dev extra: the cross-check
from pydantic import ValidationError
from sklearn.base import BaseEstimator, ClassifierMixin

from models.conformal import (
    ConformalCalibration,
    aps_scores,
    conformity_scores,
    coverage,
    lac_scores,
    prediction_sets,
    ranked_members,
)

ALPHA_ERROR = r"Invalid value for `alpha`: expected 1/\(n\+1\)="


def _dirichlet_data(
    rng: np.random.Generator, n: int, classes: int = 10, concentration: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated by construction: each label is drawn from its own probabilities."""
    probs = rng.dirichlet(np.full(classes, concentration), size=n)  # (n, C)
    labels = (rng.random((n, 1)) > probs.cumsum(axis=1)).sum(axis=1)  # (n,) y ~ Cat(p)
    return probs, np.minimum(labels, classes - 1)


def _calibration(scores: tuple[float, ...], method: str = "lac") -> ConformalCalibration:
    return ConformalCalibration(method=method, scores=scores)


# Scores by hand


def test_lac_scores_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(lac_scores(probs, np.array([0, 1])), [0.3, 0.7])


def test_aps_scores_by_hand():
    probs = np.tile([0.2, 0.5, 0.3], (3, 1))  # ranking: 1, 2, 0
    labels = np.array([0, 1, 2])
    np.testing.assert_allclose(aps_scores(probs, labels), [1.0, 0.5, 0.8])  # through y
    np.testing.assert_allclose(aps_scores(probs, labels, u=0.5), [0.9, 0.25, 0.65])
    np.testing.assert_allclose(aps_scores(probs, labels, u=0.0), [0.8, 0.0, 0.5])  # above y
    u = np.array([0.1, 1.0, 0.0])
    np.testing.assert_allclose(aps_scores(probs, labels, u=u), [0.82, 0.5, 0.5])


def test_aps_ties_are_broken_by_class_index():
    probs = np.tile([0.4, 0.2, 0.4], (3, 1))  # ranking: 0, 2, 1
    np.testing.assert_allclose(aps_scores(probs, np.array([0, 1, 2])), [0.4, 1.0, 0.8])


def test_aps_with_a_generator_draws_one_u_per_image():
    probs, labels = _dirichlet_data(np.random.default_rng(0), 50)
    drawn = aps_scores(probs, labels, np.random.default_rng(3))
    given = aps_scores(probs, labels, np.random.default_rng(3).random(50))
    np.testing.assert_array_equal(drawn, given)
    assert np.all(drawn <= aps_scores(probs, labels) + 1e-12)  # u < 1: below the u=1 score


@pytest.mark.parametrize(
    ("probs", "labels", "u", "message"),
    [
        (np.array([[0.5, 0.6]]), [0], None, "rows summing to 1"),
        (np.array([[1.5, -0.5]]), [0], None, ">= 0"),
        (np.array([0.5, 0.5]), [0], None, r"shape \(B, C\)"),
        (np.array([[0.5, 0.5]]), [2], None, "0 <= label < 2"),
        (np.array([[0.5, 0.5]]), [0.0], None, "expected integers"),
        (np.array([[0.5, 0.5]]), [0], 1.5, r"values in \[0, 1\]"),
        (np.array([[0.5, 0.5]]), [0], np.zeros(2), r"shape \(1,\)"),
    ],
)
def test_bad_inputs_are_rejected(probs, labels, u, message):
    with pytest.raises(ValueError, match=message):
        conformity_scores(probs, np.asarray(labels), "aps", u)


# Quantile indexing


def test_one_score_answers_alpha_from_one_half():
    calibration = _calibration((0.4,))
    assert calibration.n == 1
    assert calibration.alpha_range == (0.5, 1.0)
    assert calibration.quantile(0.5) == 0.4  # k = ceil(2 * 0.5) = 1
    assert calibration.quantile(0.99) == 0.4
    for alpha in (0.5 - 1e-8, 0.0, 1.0, -1.0, float("-inf"), float("inf"), float("nan")):
        with pytest.raises(ValueError, match=ALPHA_ERROR + r"0\.5 <= alpha < 1"):
            calibration.quantile(alpha)


def test_two_scores_by_hand():
    calibration = _calibration((0.2, 0.7))
    assert calibration.quantile(1 / 3) == 0.7  # k = ceil(3 * 2/3) = 2
    assert calibration.quantile(0.5) == 0.7  # k = ceil(1.5) = 2
    assert calibration.quantile(2 / 3) == 0.2  # k = ceil(3 * 1/3) = 1
    assert calibration.quantile(0.9) == 0.2  # k = ceil(0.3) = 1
    with pytest.raises(ValueError, match=ALPHA_ERROR + r"0\.333.* received alpha=0\.3333"):
        calibration.quantile(1 / 3 * (1 - 1e-6))


def test_float_round_off_does_not_move_the_rank():
    calibration = _calibration(tuple(float(i) for i in range(1, 9)))  # n = 8
    assert 9 * (1 - 1 / 3) > 6  # float: 6.000000000000001, a naive ceil gives 7
    assert calibration.rank(1 / 3) == 6
    assert calibration.quantile(1 / 3) == 6.0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 99, 100, 1000, 4999])
def test_smallest_alpha_takes_the_largest_score(n):
    scores = tuple(np.sort(np.random.default_rng(n).random(n)).tolist())
    calibration = _calibration(scores)
    low, high = calibration.alpha_range
    assert calibration.quantile(low) == scores[-1]
    assert calibration.rank(low) == n
    assert n == 1 or calibration.rank(2 * low) == n - 1
    # "Just below" means by more than ALPHA_TOLERANCE (1e-9), which absorbs float round-off.
    for alpha in (low - 1e-8, low * (1 - 1e-4), high, 1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match=ALPHA_ERROR + ".* <= alpha < 1 with n="):
            calibration.quantile(alpha)


def test_rank_is_the_ceiling_of_n_plus_one_times_one_minus_alpha():
    calibration = _calibration(tuple(range(1, 101)))  # score i is the i-th smallest
    for alpha in (0.011, 0.05, 0.1, 0.25, 0.5, 0.77, 0.999):
        k = math.ceil(101 * (1 - alpha))
        assert calibration.quantile(alpha) == k


# The calibration object


def test_fit_keeps_every_score_sorted_and_round_trips_as_json():
    probs, labels = _dirichlet_data(np.random.default_rng(1), 200)
    calibration = ConformalCalibration.fit(probs, labels, "aps", np.random.default_rng(2))
    expected = np.sort(aps_scores(probs, labels, np.random.default_rng(2).random(200)))
    np.testing.assert_array_equal(calibration.scores, expected)
    assert ConformalCalibration.model_validate_json(calibration.model_dump_json()) == calibration
    with pytest.raises(ValidationError):
        calibration.method = "lac"


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "lac", "scores": (0.5, 0.2)},
        {"method": "lac", "scores": ()},
        {"method": "lac", "scores": (0.1, math.inf)},
        {"method": "raps", "scores": (0.1,)},
    ],
)
def test_bad_calibrations_are_rejected(fields):
    with pytest.raises(ValidationError):
        ConformalCalibration(**fields)


# Sets


def test_sets_are_the_classes_whose_own_score_is_within_q():
    rng = np.random.default_rng(4)
    probs, labels = _dirichlet_data(rng, 300)
    test = rng.dirichlet(np.ones(10), size=100)  # (B, C)
    for method in ("lac", "aps"):
        calibration = ConformalCalibration.fit(probs, labels, method, rng)
        u = rng.random(100)
        members = prediction_sets(test, calibration, 0.1, u=u)  # (B, C)
        for c in range(10):
            own = conformity_scores(test, np.full(100, c), method, u)  # (B,)
            np.testing.assert_array_equal(members[:, c], own <= calibration.quantile(0.1))


def test_lac_by_hand_and_an_empty_set_stays_empty():
    calibration = ConformalCalibration.fit(np.array([[0.9, 0.05, 0.05]] * 3), [0, 0, 0], "lac")
    test = np.array([[0.92, 0.05, 0.03], [0.4, 0.3, 0.3]])
    members = prediction_sets(test, calibration, 0.25)  # q = 0.1 (up to float)
    np.testing.assert_array_equal(members, [[True, False, False], [False, False, False]])


def test_aps_sets_with_u_zero_always_hold_the_top_class():
    rng = np.random.default_rng(5)
    probs, labels = _dirichlet_data(rng, 100, concentration=0.2)
    calibration = ConformalCalibration.fit(probs, labels, "aps", rng)
    test = rng.dirichlet(np.full(10, 0.05), size=500)  # many very confident rows
    members = prediction_sets(test, calibration, 0.9, u=0.0)
    assert members[np.arange(500), test.argmax(axis=1)].all()


@pytest.mark.parametrize(("method", "u"), [("lac", None), ("aps", None), ("aps", "random")])
def test_sets_are_never_empty_at_the_smallest_alpha(method, u):
    rng = np.random.default_rng(6)
    probs, labels = _dirichlet_data(rng, 400)
    calibration = ConformalCalibration.fit(probs, labels, method, rng if u else None)
    q = calibration.quantile(calibration.alpha_range[0])
    # Why: for LAC the top class is in whenever q >= 1 - 1/C (p_max >= 1/C).
    assert method != "lac" or q >= 1 - 1 / 10
    test = rng.dirichlet(np.ones(10), size=2000)
    members = prediction_sets(test, calibration, calibration.alpha_range[0], rng if u else None)
    assert members.any(axis=1).all()


def test_ranked_members_most_probable_first():
    probs_row = np.array([0.1, 0.4, 0.1, 0.4])
    assert ranked_members(probs_row, np.array([True, True, False, True])) == [1, 3, 0]
    assert ranked_members(probs_row, np.zeros(4, dtype=bool)) == []
    with pytest.raises(ValueError, match="member_row"):
        ranked_members(probs_row, np.ones(3, dtype=bool))


def test_coverage_counts_labels_in_their_sets():
    members = np.array([[True, False], [False, True], [True, True], [False, False]])
    assert coverage(members, np.array([0, 0, 1, 1])) == 0.5


# Coverage over random re-splits

N_CAL, N_TEST, ALPHA, SPLITS = 100, 500, 0.1, 400
K = math.ceil((N_CAL + 1) * (1 - ALPHA))  # 91: expected coverage K/(n+1) = 0.90099
# Per split, coverage varies binomially given the calibration (alpha(1-alpha)/m) and
# through q (Beta(k, n+1-k), variance ~ alpha(1-alpha)/(n+2)); the mean over SPLITS
# splits has standard error SE ~ 0.0016; tolerance 4 SE ~ 0.0065 < 1/(n+1) ~ 0.0099,
# so an off-by-one in k (coverage 90/101 = 0.891) fails.
SE = math.sqrt(ALPHA * (1 - ALPHA) * (1 / N_TEST + 1 / (N_CAL + 2)) / SPLITS)
TOLERANCE = 4 * SE


@pytest.mark.parametrize(("method", "randomized"), [("lac", False), ("aps", True), ("aps", False)])
def test_mean_coverage_over_resplits_is_within_the_bounds(method, randomized):
    rng = np.random.default_rng(8)
    probs, labels = _dirichlet_data(rng, 3000)
    covered = []
    for _ in range(SPLITS):
        order = rng.permutation(3000)
        cal, test = order[:N_CAL], order[N_CAL : N_CAL + N_TEST]
        u = rng if randomized else None
        calibration = ConformalCalibration.fit(probs[cal], labels[cal], method, u)
        members = prediction_sets(probs[test], calibration, ALPHA, u)
        covered.append(coverage(members, labels[test]))
    mean = float(np.mean(covered))
    assert 1 - ALPHA - TOLERANCE <= mean <= 1 - ALPHA + 1 / (N_CAL + 1) + TOLERANCE
    assert abs(mean - K / (N_CAL + 1)) <= TOLERANCE


def test_aps_sets_with_u_zero_over_cover():
    rng = np.random.default_rng(9)
    probs, labels = _dirichlet_data(rng, 3000)
    covered = []
    for _ in range(100):
        order = rng.permutation(3000)
        cal, test = order[:N_CAL], order[N_CAL : N_CAL + N_TEST]
        calibration = ConformalCalibration.fit(probs[cal], labels[cal], "aps", rng)
        covered.append(
            coverage(prediction_sets(probs[test], calibration, ALPHA, 0.0), labels[test])
        )
    assert np.mean(covered) >= 1 - ALPHA


# Cross-check with MAPIE


class _Lookup(ClassifierMixin, BaseEstimator):
    """A prefit classifier whose input is a row index into fixed probabilities."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.classes_ = np.arange(probs.shape[1])
        self.n_features_in_ = 1

    def fit(self, X: np.ndarray, y: np.ndarray) -> _Lookup:
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.probs[np.asarray(X)[:, 0].astype(np.int64)]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)


CROSS_N, CROSS_B, SEED = 500, 400, 11
# MAPIE takes confidence levels; alpha = 1 - level is what both sides use.
CROSS_ALPHAS = tuple(1 - (1 - a) for a in (1 / CROSS_N, 0.05, 0.1, 0.2, 0.5))


@pytest.fixture(scope="module")
def cross_data() -> dict[str, np.ndarray]:
    probs, labels = _dirichlet_data(np.random.default_rng(10), CROSS_N + CROSS_B)
    rows = np.arange(CROSS_N + CROSS_B)
    # The test rows include the calibration rows: a score at q itself must be in both.
    return {"probs": probs, "labels": labels, "cal": rows[:CROSS_N], "test": rows}


def _mapie_sets(data: dict[str, np.ndarray], score: str, **params: object) -> np.ndarray:
    """MAPIE's sets (B, C, alphas) for the test rows, calibrated on the calibration rows."""
    mapie = SplitConformalClassifier(
        estimator=_Lookup(data["probs"]),
        confidence_level=[1 - a for a in CROSS_ALPHAS],
        conformity_score=score,
        prefit=True,
        random_state=SEED,
    )
    mapie.conformalize(data["cal"][:, None], data["labels"][data["cal"]])
    _, sets = mapie.predict_set(data["test"][:, None], conformity_score_params=params or None)
    return sets


def test_cross_check_alphas_avoid_the_float_convention_gap():
    for alpha in CROSS_ALPHAS:
        count = (CROSS_N + 1) * (1 - alpha)
        assert abs(count - round(count)) > 1e-6
        assert 1 / CROSS_N <= alpha <= 1 - 1 / CROSS_N  # MAPIE's accepted range


def test_lac_sets_match_mapie(cross_data):
    probs, labels, cal = cross_data["probs"], cross_data["labels"], cross_data["cal"]
    theirs = _mapie_sets(cross_data, "lac")  # (B, C, alphas)
    calibration = ConformalCalibration.fit(probs[cal], labels[cal], "lac")
    for i, alpha in enumerate(CROSS_ALPHAS):
        ours = prediction_sets(probs[cross_data["test"]], calibration, alpha)
        np.testing.assert_array_equal(ours, theirs[:, :, i], err_msg=f"alpha={alpha}")
    sizes = theirs.sum(axis=1)  # (B, alphas): the comparison is not trivial
    assert (sizes[:, 0] == 10).any() and (sizes[:, -1] == 0).any()
    assert len(np.unique(sizes)) > 5


def _aps_calibration(data: dict[str, np.ndarray]) -> ConformalCalibration:
    """Ours, with MAPIE's draw: its score is cumsum - U p_y, ours above + (1 - U) p_y."""
    cal = data["cal"]
    u = 1.0 - np.random.RandomState(SEED).uniform(size=CROSS_N)  # MAPIE's own draw
    return ConformalCalibration.fit(data["probs"][cal], data["labels"][cal], "aps", u)


def test_aps_sets_match_mapie_default_with_u_zero(cross_data):
    theirs = _mapie_sets(cross_data, "aps")  # include_last_label=True
    calibration = _aps_calibration(cross_data)
    for i, alpha in enumerate(CROSS_ALPHAS):
        ours = prediction_sets(cross_data["probs"][cross_data["test"]], calibration, alpha, 0.0)
        np.testing.assert_array_equal(ours, theirs[:, :, i], err_msg=f"alpha={alpha}")
    assert len(np.unique(theirs.sum(axis=1))) > 5


def test_randomized_aps_sets_match_mapie(cross_data):
    theirs = _mapie_sets(cross_data, "aps", include_last_label="randomized")
    calibration = _aps_calibration(cross_data)
    u = 1.0 - np.random.RandomState(SEED).uniform(size=len(cross_data["test"]))
    for i, alpha in enumerate(CROSS_ALPHAS):
        ours = prediction_sets(cross_data["probs"][cross_data["test"]], calibration, alpha, u)
        np.testing.assert_array_equal(ours, theirs[:, :, i], err_msg=f"alpha={alpha}")
    probs = cross_data["probs"][cross_data["test"]]
    assert (theirs[:, :, 2] != prediction_sets(probs, calibration, CROSS_ALPHAS[2], 0.0)).any()


def test_non_randomized_aps_sets_match_mapie_but_for_its_forced_top_class(cross_data):
    theirs = _mapie_sets(cross_data, "aps", include_last_label=False)
    calibration = _aps_calibration(cross_data)
    probs = cross_data["probs"][cross_data["test"]]  # (B, C)
    top = probs.argmax(axis=1)  # (B,)
    for i, alpha in enumerate(CROSS_ALPHAS):
        ours = prediction_sets(probs, calibration, alpha, None)
        empty = ~ours.any(axis=1)  # (B,)
        np.testing.assert_array_equal(ours[~empty], theirs[~empty, :, i], err_msg=f"{alpha=}")
        np.testing.assert_array_equal(theirs[empty, :, i], np.eye(10, dtype=bool)[top[empty]])
    assert (~prediction_sets(probs, calibration, CROSS_ALPHAS[-1], None).any(axis=1)).any()
