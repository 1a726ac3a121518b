"""Feature-density out-of-distribution score (as in DDU, Mukhoti et al. 2021).

Class-conditional Gaussians fitted on the frozen base's pooled features of the
training images; an image's score is its log density under the mixture,
log sum_c pi_c N(z; mu_c, Sigma_c). Low density = unlike the training data.
The features come out of the deterministic pass the predictor makes anyway,
so the score costs no extra forward pass.

One full covariance per class, estimated with scikit-learn's Ledoit-Wolf
shrinkage so that it stays well conditioned with fewer images per class than
feature dimensions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf
from threadpoolctl import ThreadpoolController


@functools.cache
def _threadpools() -> ThreadpoolController:
    """The loaded BLAS and OpenMP libraries (finding them takes milliseconds: once)."""
    return ThreadpoolController()


@dataclass(frozen=True)
class FeatureDensity:
    """Fitted class-conditional Gaussians: per class a mean, a rotation and scalings."""

    means: np.ndarray  # (C, D)
    rotations: np.ndarray  # (C, D, D)
    scalings: np.ndarray  # (C, D)
    log_priors: np.ndarray  # (C,)

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, labels: np.ndarray, jitter: float = 1e-6
    ) -> FeatureDensity:
        """Fit on (N, D) embeddings (pooled base features) with integer labels (N,).

        Each class's covariance is scikit-learn's Ledoit-Wolf estimate plus
        `jitter` times the mean variance (at least `jitter`) on the diagonal,
        as DDU does, so that constant (dead) feature dimensions stay invertible.
        """
        if jitter <= 0.0:
            raise ValueError(f"Invalid value for `jitter`: expected > 0, received jitter={jitter}")
        z, labels = np.asarray(embeddings, np.float64), np.asarray(labels)
        classes = np.unique(labels)
        means, rotations, scalings = [], [], []
        for label in classes:
            members = z[labels == label]
            covariance = LedoitWolf().fit(members).covariance_
            ridge = jitter * max(float(np.trace(covariance)) / z.shape[1], 1.0)
            scaling, rotation = np.linalg.eigh(covariance + ridge * np.eye(z.shape[1]))
            means.append(members.mean(axis=0))
            rotations.append(rotation)
            scalings.append(scaling)
        priors = np.array([(labels == label).mean() for label in classes])
        return cls(np.stack(means), np.stack(rotations), np.stack(scalings), np.log(priors))

    def log_density(self, embeddings: np.ndarray) -> np.ndarray:
        """log sum_c pi_c N(z; mu_c, Sigma_c) for each row of (N, D) embeddings -> (N,).

        BLAS runs on one thread: the products are small, and OpenBLAS's idle
        threads spin for a while after each call, taking cores from TensorFlow
        (17 % of the model service's CPU under load, measured with perf).
        """
        with _threadpools().limit(limits=1, user_api="blas"):
            return self._log_density(np.asarray(embeddings, np.float64))

    def _log_density(self, z: np.ndarray) -> np.ndarray:
        dim = z.shape[1]
        per_class = []
        for mean, rotation, scaling, log_prior in zip(
            self.means, self.rotations, self.scalings, self.log_priors, strict=True
        ):
            projected = (z - mean) @ rotation / np.sqrt(scaling)  # whitened (N, D)
            log_det = np.log(scaling).sum()
            log_normal = -0.5 * ((projected**2).sum(axis=1) + log_det + dim * np.log(2 * np.pi))
            per_class.append(log_normal + log_prior)
        return logsumexp(np.stack(per_class, axis=1), axis=1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The parameters as named arrays, for saving next to the model."""
        return {
            "means": self.means,
            "rotations": self.rotations,
            "scalings": self.scalings,
            "log_priors": self.log_priors,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureDensity:
        """Inverse of `to_arrays`."""
        return cls(**{name: np.asarray(arrays[name]) for name in cls.__dataclass_fields__})


def pool(base_output: np.ndarray) -> np.ndarray:
    """Global-average-pool base feature maps (N, H', W', D) -> (N, D): the density's input."""
    base_output = np.asarray(base_output)
    return base_output.mean(axis=tuple(range(1, base_output.ndim - 1)))
