"""Feature-density OOD score: exact against SciPy, ordering, round trip, small classes,
BLAS threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.covariance import LedoitWolf
from threadpoolctl import threadpool_info

from models.density import (
    MAX_PART_DIM,
    FeatureDensity,
    OODScore,
    l2_normalize,
    limit_blas_threads,
    pool,
)
from tests.backends import assert_same_numbers


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0]])
    labels = np.repeat([0, 1], [30, 10])
    return centers[labels] + rng.normal(0.0, 1.0, (40, 3)), labels


def test_log_density_is_the_class_mixture_of_gaussians():
    features, labels = _data()
    jitter = 1e-6
    density = FeatureDensity.fit(features, labels, jitter=jitter)
    points = np.array([[0.5, -0.2, 0.1], [4.0, 6.0, 1.0], [20.0, 0.0, 0.0]])
    parts = []
    for label, prior in ((0, 0.75), (1, 0.25)):
        members = features[labels == label]
        cov = LedoitWolf().fit(members).covariance_
        cov = cov + jitter * max(np.trace(cov) / 3, 1.0) * np.eye(3)
        parts.append(np.log(prior) + multivariate_normal(members.mean(0), cov).logpdf(points))
    expected = logsumexp(parts, axis=0)
    np.testing.assert_allclose(density.log_density(points), expected, rtol=1e-6)  # float32 products


def test_far_points_are_less_dense():
    features, labels = _data()
    density = FeatureDensity.fit(features, labels)
    inside = density.log_density(features)
    outside = density.log_density(features + 50.0)
    assert inside.min() > outside.max()


def test_constant_dimensions_stay_invertible():
    features, labels = _data()
    features = np.concatenate([features, np.zeros((40, 5))], axis=1)  # dead units
    assert np.all(np.isfinite(FeatureDensity.fit(features, labels).log_density(features)))


def test_round_trip_through_arrays():
    density = FeatureDensity.fit(*_data())
    again = FeatureDensity.from_arrays(density.to_arrays())
    points = np.ones((2, 3))
    np.testing.assert_array_equal(density.log_density(points), again.log_density(points))


def test_bad_jitter_is_rejected():
    with pytest.raises(ValueError, match="jitter"):
        FeatureDensity.fit(*_data(), jitter=0.0)


def test_pool_averages_the_spatial_axes():
    maps = np.arange(2 * 2 * 2 * 3, dtype=float).reshape(2, 2, 2, 3)
    np.testing.assert_allclose(pool(maps), maps.mean(axis=(1, 2)))


def _with_a_lone_image(label: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """`_data()` plus one class with a single image."""
    features, labels = _data()
    return np.vstack([features, [[0.0, 5.0, 5.0]]]), np.append(labels, label)


def _covariances(density: FeatureDensity) -> np.ndarray:
    """Each class's covariance (jitter included) back from its eigendecomposition."""
    return np.einsum("cij,cj,ckj->cik", density.rotations, density.scalings, density.rotations)


def test_a_class_with_one_image_gets_the_pooled_covariance():
    features, labels = _with_a_lone_image()
    with pytest.warns(UserWarning, match=r"min_class_images=5.*\{7: 1\}"):
        density = FeatureDensity.fit(features, labels, jitter=1e-6)
    class_means = np.stack([features[labels == c].mean(0) for c in (0, 1, 7)])
    centred = features - class_means[np.searchsorted([0, 1, 7], labels)]
    pooled = LedoitWolf(assume_centered=True).fit(centred).covariance_
    pooled = pooled + 1e-6 * max(np.trace(pooled) / 3, 1.0) * np.eye(3)
    np.testing.assert_allclose(_covariances(density)[2], pooled, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(density.means[2], [0.0, 5.0, 5.0])
    np.testing.assert_allclose(np.exp(density.log_priors), [30 / 41, 10 / 41, 1 / 41])


def test_a_class_with_one_image_has_sensible_densities():
    features, labels = _with_a_lone_image()
    with pytest.warns(UserWarning):
        density = FeatureDensity.fit(features, labels)
    lone = np.array([0.0, 5.0, 5.0])
    scores = density.log_density(np.stack([lone, lone + 0.5, lone + 50.0]))
    assert np.all(np.isfinite(scores))
    assert scores[0] > scores[2] and scores[1] > scores[2]
    assert scores[1] > scores[0] - 10.0  # half a unit off is not absurdly unlikely


@pytest.mark.filterwarnings("ignore:Only one sample available")
def test_without_the_fallback_a_lone_image_gets_a_spike():
    """Control: its own estimate is zero (plus jitter), a spike the fallback avoids."""
    features, labels = _with_a_lone_image()
    own = FeatureDensity.fit(features, labels, min_class_images=1)
    assert own.scalings[2].max() <= 1e-6  # variance 1e-6 in every direction
    with pytest.warns(UserWarning):
        pooled = FeatureDensity.fit(features, labels)
    lone = np.array([[0.0, 5.0, 5.0]])
    assert own.log_density(lone)[0] > pooled.log_density(lone)[0] + 15.0


def test_classes_with_enough_images_keep_their_own_estimate():
    features, labels = _data()
    alone = FeatureDensity.fit(features, labels)
    with pytest.warns(UserWarning, match=r"\{7: 1\}"):
        mixed = FeatureDensity.fit(*_with_a_lone_image())
    for name in ("means", "rotations", "scalings"):
        np.testing.assert_array_equal(getattr(mixed, name)[:2], getattr(alone, name))


def test_min_class_images_is_the_threshold():
    features, labels = _data()
    small = labels.copy()
    small[np.flatnonzero(labels == 1)[5:]] = 0  # class 1 keeps 5 images
    own = FeatureDensity.fit(features, small)  # 5 >= 5: its own estimate, no warning
    members = features[small == 1]
    expected = LedoitWolf().fit(members).covariance_
    expected = expected + 1e-6 * max(np.trace(expected) / 3, 1.0) * np.eye(3)
    np.testing.assert_allclose(_covariances(own)[1], expected, rtol=1e-10, atol=1e-12)
    with pytest.warns(UserWarning, match=r"min_class_images=6.*\{1: 5\}"):
        pooled = FeatureDensity.fit(features, small, min_class_images=6)
    assert not np.allclose(_covariances(pooled)[1], expected)
    np.testing.assert_array_equal(pooled.means, own.means)


def test_enough_images_everywhere_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FeatureDensity.fit(*_data())


def test_bad_min_class_images_and_lone_images_only_are_rejected():
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match=r"Invalid value for `min_class_images`: expected"):
            FeatureDensity.fit(*_data(), min_class_images=bad)
    with pytest.raises(ValueError, match=r"Invalid value for `labels`: expected at least one"):
        FeatureDensity.fit(np.eye(3), np.array([0, 1, 2]))


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_a_rows_log_density_does_not_depend_on_the_other_rows():
    """Batch invariance: the served answer of an image must not change with what else is
    in its adaptive batch (bit for bit on TensorFlow, within float32 rounding on JAX: see
    tests.backends). Wide features (512, as VGG16's), 10 classes."""
    rng = np.random.default_rng(3)
    labels = np.arange(300) % 10
    features = rng.normal(0.0, 1.0, (300, 512)) + np.eye(10, 512)[labels] * 3.0
    density = FeatureDensity.fit(features, labels)
    for size in (2, 7, 16, 33, 64):
        batch = rng.normal(0.0, 1.0, (size, 512))
        together = density.log_density(batch)
        for i in rng.choice(size, min(size, 3), replace=False):
            assert_same_numbers(density.log_density(batch[i : i + 1])[:1], together[i : i + 1])


def test_overlapping_log_density_calls_leave_the_blas_thread_count_alone(monkeypatch):
    """Two calls from two threads overlap: A starts, B starts, A ends, B ends.

    A limit set and restored around each call would end at what B saw on
    entry (A's limit: one thread); `log_density` must not touch the setting.
    """
    before = _blas_threads()
    if max(before, default=1) < 2:
        pytest.skip("BLAS already runs one thread here: a change could not show")
    density, points = FeatureDensity.fit(*_data()), np.ones((4, 3))
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    compute, finished = FeatureDensity._log_density, []

    def staged(self: FeatureDensity, z: np.ndarray) -> np.ndarray:
        """Inside the call: A waits for B to be inside too; B waits for A to finish."""
        first = threading.current_thread().name == "A"
        (a_inside if first else b_inside).set()
        (b_inside if first else a_done).wait(10)
        return compute(self, z)

    def call(name: str) -> None:
        if name == "B":
            a_inside.wait(10)
        finished.append((name, density.log_density(points).shape))
        if name == "A":
            a_done.set()

    monkeypatch.setattr(FeatureDensity, "_log_density", staged)
    threads = [threading.Thread(target=call, args=(name,), name=name) for name in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert finished == [("A", (4,)), ("B", (4,))]  # they overlapped as staged
    assert _blas_threads() == before


_SET_THREADS = """
import json, threading
from threadpoolctl import threadpool_info, threadpool_limits
from models.density import limit_blas_threads
blas = lambda: [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
threadpool_limits(limits=2, user_api="blas")
counts = {"before": blas()}
limit_blas_threads(3)
counts["three"] = blas()
limit_blas_threads()
counts["default"] = blas()
other = threading.Thread(target=threadpool_limits, kwargs={"limits": 2, "user_api": "blas"})
other.start()
other.join()
counts["other_thread"] = blas()
print(json.dumps(counts))
"""


def test_limit_blas_threads_sets_every_blas_library():
    """In a subprocess, so that this test process keeps its own BLAS settings."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    result = subprocess.run(
        [sys.executable, "-c", _SET_THREADS],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["before"] and set(counts["before"]) == {2}  # a change would show
    assert set(counts["three"]) == {3}
    assert set(counts["default"]) == {1}
    assert set(counts["other_thread"]) == {2}  # the start-up thread keeps no hold on it


def test_limit_blas_threads_rejects_a_bad_count():
    before = _blas_threads()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"Invalid value for `threads`: expected"):
            limit_blas_threads(bad)
    assert _blas_threads() == before


def _parts(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two feature sets of 60 images in 3 classes, directions differing by class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(60) % 3
    base = np.eye(8)[labels] * 5.0 + rng.normal(0.0, 0.5, (60, 8)) + 3.0
    hidden = np.eye(4)[labels + 1] * 2.0 + rng.normal(0.0, 0.3, (60, 4))
    return {"base": base, "hidden": hidden}, labels


def test_ood_score_sums_the_validation_standardised_parts():
    train, labels = _parts(0)
    validation, _ = _parts(1)
    ood = OODScore.fit(train, labels, validation)
    assert set(ood.densities) == {"base", "hidden"} and ood.normalized
    parts = ood.part_scores(validation)
    for name, values in parts.items():  # standardised on validation: mean 0, std 1 there
        standard = (values - ood.location[name]) / ood.scale[name]
        assert standard.mean() == pytest.approx(0.0, abs=1e-9)
        assert standard.std() == pytest.approx(1.0, rel=1e-9)
    expected = sum((parts[n] - ood.location[n]) / ood.scale[n] for n in parts)
    np.testing.assert_allclose(ood.score(validation), expected, rtol=1e-12)


def test_ood_score_ignores_feature_size_and_ranks_other_directions_higher():
    """L2-normalised parts: smaller features of the same direction (less ink) are not
    more typical; features pointing elsewhere score higher (more OOD)."""
    train, labels = _parts(0)
    ood = OODScore.fit(train, labels, train)
    same = ood.score(train)
    np.testing.assert_allclose(ood.score({k: v * 0.3 for k, v in train.items()}), same, rtol=1e-9)
    rng = np.random.default_rng(5)
    other = {k: rng.normal(0.0, 1.0, v.shape) for k, v in train.items()}
    assert np.median(ood.score(other)) > np.quantile(same, 0.95)


def test_ood_score_round_trip_and_legacy_density_files():
    train, labels = _parts(0)
    ood = OODScore.fit(train, labels, train)
    again = OODScore.from_arrays(ood.to_arrays())
    np.testing.assert_array_equal(again.score(train), ood.score(train))
    legacy = FeatureDensity.fit(train["base"], labels)  # a model saved with the raw density
    loaded = OODScore.from_arrays(legacy.to_arrays())
    assert not loaded.normalized and set(loaded.densities) == {"base"}
    np.testing.assert_array_equal(loaded.score(train), -legacy.log_density(train["base"]))


def test_ood_score_leaves_out_too_wide_parts_and_needs_one():
    train, labels = _parts(0)
    wide = {"base": train["base"], "hidden": np.zeros((60, MAX_PART_DIM + 1))}
    assert set(OODScore.fit(wide, labels, wide).densities) == {"base"}
    with pytest.raises(ValueError, match="Invalid value for `train`: expected a part at most"):
        OODScore.fit({"base": wide["hidden"]}, labels, {"base": wide["hidden"]})


def test_l2_normalize_keeps_zero_rows():
    rows = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])
