"""Split-conformal prediction sets on class probabilities, in pure NumPy.

Split conformal prediction turns any classifier's probabilities into sets of
classes with a coverage guarantee:

1. score n held-out calibration images: s_i = s(p_i, y_i), lower = more conforming;
2. for a level alpha, take q = the k-th smallest s_i, k = ceil((n+1)(1-alpha)) (1-based);
3. a new image's set is every class c whose own score s(p, c) <= q.

What is guaranteed: if the n calibration pairs and the test pair are
exchangeable (e.g. i.i.d. draws from one distribution), then
P(y in set) >= 1 - alpha, marginally: on average over calibration draws and
test images. With tie-free scores (LAC on continuous probabilities, randomized
APS) it is also < 1 - alpha + 1/(n+1).

What is not: coverage per class (class-conditional), per image or per subgroup;
coverage under distribution shift (another data source, out-of-distribution
images, changed class frequencies), which breaks exchangeability; and small
sets, which only a good model gives (a poor one gets valid but large sets).

Scores, with classes ranked by probability, descending, ties by class index:

    LAC  s(p, y) = 1 - p_y                                (Sadinle, Lei & Wasserman 2019)
    APS  s(p, y) = sum of p_c ranked above y + u * p_y    (Romano, Sesia & Candes 2020)

APS is randomized with u ~ U(0, 1) (exact coverage); u = None means u = 1, the
cumulative mass up to and including y; u = 0 gives MAPIE's default APS sets
(`include_last_label=True`): the top class always, conservative coverage.

Empty sets are returned as they are, never filled with the top class: that is
MAPIE's default for LAC (which has no such option) and for randomized APS. The
top class is in the set iff its score is <= q: for LAC iff 1 - p_max <= q,
always true when q >= 1 - 1/C (since p_max >= 1/C), which small alpha gives
unless every calibration label was given probability above 1/C; for APS iff
u * p_max <= q, always true for u = 0. An empty set says that no class is
plausible at this level (an atypical image); the argmax is still there for
callers that need one label.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
from pydantic import Field, field_validator

from models.config import Frozen

Method = Literal["lac", "aps"]
METHODS: tuple[str, ...] = get_args(Method)
Randomness = float | np.ndarray | np.random.Generator | None  # the APS u, see `aps_scores`
SUM_TOLERANCE = 1e-4  # how far from 1 a row of probabilities may sum (float32 softmax)
ALPHA_TOLERANCE = 1e-9  # alpha this close below a grid point j/(n+1) counts as on it


class AlphaError(ValueError):
    """An alpha the calibration cannot answer; the message names the allowed range."""


def _check_probs(probs: np.ndarray) -> np.ndarray:
    """`probs` as float64 (B, C), each row a probability distribution."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(
            f"Invalid value for `probs`: expected shape (B, C), received shape={probs.shape}"
        )
    if not np.all(np.isfinite(probs)) or np.any(probs < 0.0):
        raise ValueError("Invalid value for `probs`: expected finite values >= 0")
    sums = probs.sum(axis=1)  # (B,)
    if np.any(np.abs(sums - 1.0) > SUM_TOLERANCE):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(
            f"Invalid value for `probs`: expected rows summing to 1, received a row sum={worst}"
        )
    return probs


def _check_labels(labels: np.ndarray, n: int, classes: int) -> np.ndarray:
    """`labels` as int64 (n,), each in [0, classes)."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or (n and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"Invalid value for `labels`: expected integers of shape ({n},), "
            f"received dtype={labels.dtype}, shape={labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"Invalid value for `labels`: expected 0 <= label < {classes}, "
            f"received min={labels.min()}, max={labels.max()}"
        )
    return labels.astype(np.int64)


def _draw_u(u: Randomness, n: int) -> np.ndarray | None:
    """One u in [0, 1] per row, (n,): drawn from a Generator, or given (scalar or (n,))."""
    if u is None:
        return None
    if isinstance(u, np.random.Generator):
        return u.random(n)  # (n,) in [0, 1)
    values = np.asarray(u, dtype=np.float64)
    if values.ndim > 1 or (values.ndim == 1 and values.shape != (n,)):
        raise ValueError(
            f"Invalid value for `u`: expected a scalar or shape ({n},), "
            f"received shape={values.shape}"
        )
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise ValueError("Invalid value for `u`: expected values in [0, 1]")
    return np.broadcast_to(values, (n,)).copy()


def _lac_class_scores(probs: np.ndarray) -> np.ndarray:
    """1 - p_c for every class, (B, C)."""
    return 1.0 - probs


def _aps_class_scores(probs: np.ndarray, u: np.ndarray | None) -> np.ndarray:
    """Every class's APS score, (B, C), with one u per row shared by all its classes.

    Sets and calibration both use this, so a class is in a set exactly when its
    own score, computed the same way down to the last bit, is <= q.
    """
    order = np.argsort(-probs, axis=1, kind="stable")  # (B, C) most probable first
    ranked = np.take_along_axis(probs, order, axis=1)  # (B, C) descending
    through = np.cumsum(ranked, axis=1)  # (B, C) mass up to and including
    if u is None:
        ranked_scores = through
    else:
        above = np.concatenate([np.zeros_like(through[:, :1]), through[:, :-1]], axis=1)
        ranked_scores = above + u[:, None] * ranked  # (B, C); exactly 0 for the top with u=0
    scores = np.empty_like(probs)  # (B, C) back in class order
    np.put_along_axis(scores, order, ranked_scores, axis=1)
    return scores


def _class_scores(probs: np.ndarray, method: Method, u: Randomness) -> np.ndarray:
    """Every class's conformity score, (B, C); `u` is ignored by LAC."""
    if method == "lac":
        return _lac_class_scores(probs)
    if method == "aps":
        return _aps_class_scores(probs, _draw_u(u, probs.shape[0]))
    raise ValueError(f"Invalid value for `method`: expected one of {METHODS}, received {method!r}")


def conformity_scores(
    probs: np.ndarray, labels: np.ndarray, method: Method, u: Randomness = None
) -> np.ndarray:
    """Each image's score for its label, (n,): lower means the label is more plausible."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    scores = _class_scores(probs, method, u)  # (n, C)
    return scores[np.arange(probs.shape[0]), labels]


def lac_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LAC scores 1 - p_y, (n,)."""
    return conformity_scores(probs, labels, "lac")


def aps_scores(probs: np.ndarray, labels: np.ndarray, u: Randomness = None) -> np.ndarray:
    """APS scores, (n,): mass of the classes ranked above y, plus u * p_y.

    Ranking is by probability, descending, ties broken by lower class index
    first. `u` is a Generator (draws one U[0, 1) per image: the randomized
    score of Romano et al. 2020), given values (scalar or (n,), to reproduce a
    draw), or None for the non-randomized cumulative mass through y (u = 1).
    """
    return conformity_scores(probs, labels, "aps", u)


class ConformalCalibration(Frozen):
    """Sorted calibration scores of one method: answers every alpha exactly.

    Keeping all n scores rather than one quantile lets serving choose alpha
    per request; the model card can carry it as JSON (about 20 KB per 1000 scores).
    """

    method: Method
    scores: tuple[float, ...] = Field(min_length=1, description="Ascending calibration scores.")

    @field_validator("scores")
    @classmethod
    def _finite_and_sorted(cls, scores: tuple[float, ...]) -> tuple[float, ...]:
        values = np.asarray(scores, dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(np.diff(values) < 0.0):
            raise ValueError("expected finite scores sorted ascending")
        return scores

    @classmethod
    def fit(
        cls,
        probs: np.ndarray,
        labels: np.ndarray,
        method: Method,
        rng: Randomness = None,
    ) -> ConformalCalibration:
        """Score held-out `probs` (n, C) against `labels` (n,); `rng` is APS's u.

        The calibration images must not have been used for training, and must
        be exchangeable with the images served (same source, same classes).
        """
        scores = conformity_scores(probs, labels, method, rng)  # (n,)
        if scores.size == 0:
            raise ValueError("Invalid value for `probs`: expected at least one calibration image")
        return cls(method=method, scores=tuple(float(s) for s in np.sort(scores)))

    @property
    def n(self) -> int:
        """Number of calibration scores."""
        return len(self.scores)

    @property
    def alpha_range(self) -> tuple[float, float]:
        """(1/(n+1), 1): alpha may be the low end, not the high one."""
        return 1.0 / (self.n + 1), 1.0

    def rank(self, alpha: float) -> int:
        """k = ceil((n+1)(1-alpha)), 1-based, the order of the score used as q.

        alpha within ALPHA_TOLERANCE below a grid point j/(n+1) is taken as on
        it, so that float round-off in e.g. 1/3 or 1/(n+1) does not move k up.
        """
        n = self.n
        alpha = float(alpha)
        in_range = 0.0 < alpha < 1.0  # False for NaN and the infinities too
        k = math.ceil((n + 1) * (1.0 - alpha - ALPHA_TOLERANCE)) if in_range else 0
        if not in_range or k > n:
            low = self.alpha_range[0]
            raise AlphaError(
                f"Invalid value for `alpha`: expected 1/(n+1)={low} <= alpha < 1 "
                f"with n={n} calibration scores, received alpha={alpha}"
            )
        return max(k, 1)

    def quantile(self, alpha: float) -> float:
        """q, the k-th smallest calibration score (see `rank`): the set threshold."""
        return self.scores[self.rank(alpha) - 1]


def prediction_sets(
    probs: np.ndarray,
    calibration: ConformalCalibration,
    alpha: float,
    u: Randomness = None,
) -> np.ndarray:
    """Membership (B, C), bool: class c is in image b's set iff its score is <= q.

    For APS the score of c uses the same u as calibration's definition, one u
    per image (pass a Generator for the randomized sets, 0.0 for sets that
    always hold the top class, None for u = 1). Sets may be empty; see the
    module docstring.
    """
    threshold = calibration.quantile(alpha)
    scores = _class_scores(_check_probs(probs), calibration.method, u)  # (B, C)
    return scores <= threshold


def served_prediction_sets(
    probs: np.ndarray, calibration: ConformalCalibration, alpha: float
) -> np.ndarray:
    """Membership (B, C) as uqserve serves it: APS with u = 0 (the class that crosses the
    threshold is kept; supersets of the randomized sets, so coverage stays >= 1 - alpha
    whatever seed a client sends again), LAC as is."""
    return prediction_sets(probs, calibration, alpha, 0.0 if calibration.method == "aps" else None)


def ranked_members(probs_row: np.ndarray, member_row: np.ndarray) -> list[int]:
    """One set's class indices, most probable first (ties: lower index first)."""
    probs_row = np.asarray(probs_row, dtype=np.float64)
    member_row = np.asarray(member_row, dtype=bool)
    if probs_row.ndim != 1 or member_row.shape != probs_row.shape:
        raise ValueError(
            f"Invalid value for `member_row`: expected shape {probs_row.shape} like "
            f"`probs_row` (C,), received shape={member_row.shape}"
        )
    order = np.argsort(-probs_row, kind="stable")  # (C,) most probable first
    return [int(c) for c in order if member_row[c]]


def coverage(members: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose label is in their set; `members` (B, C), `labels` (B,)."""
    members = np.asarray(members, dtype=bool)
    labels = _check_labels(labels, members.shape[0], members.shape[1])
    return float(members[np.arange(members.shape[0]), labels].mean())
