"""Feature-density OOD score: exact against SciPy, ordering, round trip."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.covariance import LedoitWolf
from threadpoolctl import threadpool_info, threadpool_limits

from models.density import FeatureDensity, pool


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
    np.testing.assert_allclose(density.log_density(points), logsumexp(parts, axis=0), rtol=1e-9)


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


def test_log_density_leaves_the_blas_thread_count_as_it_was():
    """BLAS runs single-threaded inside the call only (see `log_density`)."""
    features, labels = _data()
    density = FeatureDensity.fit(features, labels)
    before = [pool["num_threads"] for pool in threadpool_info()]
    with threadpool_limits(limits=2, user_api="blas"):
        limited = [pool["num_threads"] for pool in threadpool_info()]
        density.log_density(features)
        assert [pool["num_threads"] for pool in threadpool_info()] == limited
    assert [pool["num_threads"] for pool in threadpool_info()] == before
