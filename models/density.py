"""Feature-density out-of-distribution score (as in DDU, Mukhoti et al. 2021).

`FeatureDensity`: class-conditional Gaussians fitted on training features; a
row's log density under the mixture, log sum_c pi_c N(z; mu_c, Sigma_c). Low
density = unlike the training data. `OODScore`, the served score, sums two
such densities, standardised: of the base's pooled features and of the head's
layer before its first dropout, both L2-normalised. The features come out of
the deterministic pass the predictor makes anyway, so the score costs no extra
forward pass.

One full covariance per class, estimated with scikit-learn's Ledoit-Wolf
shrinkage so that it stays well conditioned with fewer images per class than
feature dimensions. A class with too few images for its own estimate (fewer
than `min_class_images`) uses the pooled within-class covariance instead.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from keras import ops
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf
from threadpoolctl import OpenBLASController, threadpool_limits

MIN_CLASS_IMAGES = 5
CHUNK_ROWS = 1024  # rows whitened per call: bounds the (C, rows, D) product's memory


def limit_blas_threads(threads: int = 1) -> None:
    """Set every loaded BLAS library (OpenBLAS, MKL, ...) to `threads` threads, process-wide.

    A serving process calls this once at start-up, not around each call:
    NumPy's products there are small, and OpenBLAS's idle threads spin for a
    while after each one, taking cores from TensorFlow (17 % of a serving
    process's CPU under load, measured with perf). A limit set and restored
    around every call changes the same process-wide setting, so two calls
    overlapping in different threads can leave the process at one thread for good.
    TensorFlow does not use these libraries, so its own thread pools are unaffected.
    Libraries loaded later are not limited; NumPy and SciPy are loaded by now.
    The calling thread keeps no hold on the setting (threadpoolctl 3.8 would
    otherwise ignore other threads' limits while it lives). An OpenMP-threaded
    BLAS (not the pthreads OpenBLAS of pip's NumPy and SciPy) takes the limit
    per thread; there, set OMP_NUM_THREADS=1 in the environment instead.
    """
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ValueError(
            f"Invalid value for `threads`: expected an integer >= 1, received threads={threads!r}"
        )
    threadpool_limits(limits=int(threads), user_api="blas")
    release = getattr(OpenBLASController, "clear_controlling_thread", None)
    if release is not None:  # threadpoolctl >= 3.8 lets only this thread change it again
        release()


@dataclass(frozen=True)
class FeatureDensity:
    """Fitted class-conditional Gaussians: per class a mean, a rotation and scalings."""

    means: np.ndarray  # (C, D)
    rotations: np.ndarray  # (C, D, D)
    scalings: np.ndarray  # (C, D)
    log_priors: np.ndarray  # (C,)

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        labels: np.ndarray,
        jitter: float = 1e-6,
        min_class_images: int = MIN_CLASS_IMAGES,
    ) -> FeatureDensity:
        """Fit on (N, D) embeddings (pooled base features) with integer labels (N,).

        Each class's covariance is scikit-learn's Ledoit-Wolf estimate plus
        `jitter` times the mean variance (at least `jitter`) on the diagonal,
        as DDU does, so that constant (dead) feature dimensions stay invertible.

        A class with fewer than `min_class_images` images uses the pooled
        within-class covariance instead (Ledoit-Wolf on every image's embedding
        minus its class mean), with a warning naming it: from one image its own
        estimate is zero, from very few it rests on a handful of directions,
        and the densities come out absurd (-1e8 and worse at D = 512). Its mean
        and prior are still its own. Classes with enough images are unaffected.
        """
        _check_fit_arguments(jitter, min_class_images)
        z, labels = np.asarray(embeddings, np.float64), np.asarray(labels)
        classes, counts = np.unique(labels, return_counts=True)
        means = np.stack([z[labels == label].mean(axis=0) for label in classes])
        small = counts < min_class_images
        pooled = _pooled_covariance(z, labels, classes, counts, means) if small.any() else None
        if small.any():
            _warn_small_classes(classes[small], counts[small], min_class_images)
        rotations, scalings = [], []
        for label, is_small in zip(classes, small, strict=True):
            covariance = pooled if is_small else LedoitWolf().fit(z[labels == label]).covariance_
            ridge = jitter * max(float(np.trace(covariance)) / z.shape[1], 1.0)
            scaling, rotation = np.linalg.eigh(covariance + ridge * np.eye(z.shape[1]))
            rotations.append(rotation)
            scalings.append(scaling)
        log_priors = np.log(counts / counts.sum())
        return cls(means, np.stack(rotations), np.stack(scalings), log_priors)

    def log_density(self, embeddings: np.ndarray) -> np.ndarray:
        """log sum_c pi_c N(z; mu_c, Sigma_c) for each row of (N, D) embeddings -> (N,).

        The whitening products run in float32 as one batched `keras.ops.matmul`
        (the backend's thread pool; at 8 rows of 512, 0.65 ms against 2.6 ms for
        float64 NumPy, which reads 21 MB of matrices per call), the mixture in
        float64. A row's result does not depend on the other rows of the call
        (a test checks), so a batched answer equals the lone one; NumPy's BLAS
        gives no such guarantee in float32. BLAS threads are left alone.
        """
        z = np.asarray(embeddings, np.float32)
        chunks = [self._log_density(z[s : s + CHUNK_ROWS]) for s in range(0, len(z), CHUNK_ROWS)]
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def _log_density(self, z: np.ndarray) -> np.ndarray:
        centred = ops.convert_to_tensor(z)[None] - self._means32[:, None]  # (C, N, D)
        whitened = ops.matmul(centred, self._whitening)  # (C, N, D)
        squared = ops.convert_to_numpy(ops.sum(ops.square(whitened), axis=2))  # (C, N)
        log_normal = -0.5 * (
            squared.astype(np.float64) + self._log_dets[:, None] + z.shape[1] * np.log(2 * np.pi)
        )
        return logsumexp(log_normal.T + self.log_priors, axis=1)  # (N,)

    @cached_property
    def _means32(self) -> Any:
        return ops.convert_to_tensor(self.means.astype(np.float32))  # (C, D)

    @cached_property
    def _whitening(self) -> Any:
        """Per class, rotation / sqrt(scaling): (z - mu) @ it is whitened. (C, D, D) float32."""
        return ops.convert_to_tensor(
            (self.rotations / np.sqrt(self.scalings)[:, None, :]).astype(np.float32)
        )

    @cached_property
    def _log_dets(self) -> np.ndarray:
        return np.log(self.scalings).sum(axis=1)  # (C,) log det Sigma_c

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


def _check_fit_arguments(jitter: float, min_class_images: int) -> None:
    """Keras-style errors for `FeatureDensity.fit`'s numeric arguments."""
    if not jitter > 0.0:
        raise ValueError(f"Invalid value for `jitter`: expected > 0, received jitter={jitter}")
    if (
        isinstance(min_class_images, bool)
        or not isinstance(min_class_images, numbers.Integral)
        or min_class_images < 1
    ):
        raise ValueError(
            "Invalid value for `min_class_images`: expected an integer >= 1, "
            f"received min_class_images={min_class_images!r}"
        )


def _pooled_covariance(
    z: np.ndarray, labels: np.ndarray, classes: np.ndarray, counts: np.ndarray, means: np.ndarray
) -> np.ndarray:
    """Ledoit-Wolf covariance of all embeddings centred on their class means (D, D).

    With one image in every class there is no within-class spread to pool
    (the estimate would be zero): refused rather than fitted to absurd densities.
    """
    if counts.max() < 2:
        raise ValueError(
            "Invalid value for `labels`: expected at least one class with 2 or more images "
            f"(to estimate a covariance), received {len(labels)} images in "
            f"{len(classes)} classes of one image each"
        )
    centred = z - means[np.searchsorted(classes, labels)]
    return LedoitWolf(assume_centered=True).fit(centred).covariance_


def _warn_small_classes(classes: np.ndarray, counts: np.ndarray, min_class_images: int) -> None:
    """Name the classes that fall back to the pooled covariance, with their image counts."""
    pairs = zip(classes.tolist(), counts.tolist(), strict=True)
    named = ", ".join(f"{label!r}: {count}" for label, count in pairs)
    warnings.warn(
        f"FeatureDensity.fit: {len(classes)} class(es) with fewer than "
        f"min_class_images={min_class_images} training images use the pooled within-class "
        f"covariance instead of their own (class: images) {{{named}}}",
        UserWarning,
        stacklevel=3,
    )


PARTS = ("base", "hidden")  # the feature sets an OOD score may rest on
MAX_PART_DIM = 1024  # a wider feature set is left out: its D x D covariances get too large


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows of (N, D) features scaled to unit length (all-zero rows stay zero), float64."""
    features = np.asarray(features, np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0.0, norms, 1.0)


@dataclass(frozen=True)
class OODScore:
    """The served OOD score, from the features of the one deterministic pass.

    Each part is the negative log density of one feature set under class
    Gaussians (`FeatureDensity`) fitted on the training split: `base`, the
    base's globally pooled features, and `hidden`, the head's layer before its
    first dropout (the trained network's own features, as in DDU). Features are
    L2-normalised first: an image with less ink (an MNIST digit against
    Fashion-MNIST) has smaller features, which sit closer to every class mean
    and so looked more typical, not less. Each part is standardised by its mean
    and standard deviation on the validation split; the score is their sum.

    A model saved before this has one raw part (`normalized` False, location 0,
    scale 1): it scores exactly as it always did.
    """

    densities: dict[str, FeatureDensity]
    location: dict[str, float]
    scale: dict[str, float]
    normalized: bool = True

    @classmethod
    def fit(
        cls, train: dict[str, np.ndarray], labels: np.ndarray, validation: dict[str, np.ndarray]
    ) -> OODScore:
        """Densities on the `train` features (part -> (N, D)), standardised on `validation`.

        Parts wider than MAX_PART_DIM are left out (a head whose first dropout
        sits on the flattened base maps has no narrow hidden layer).
        """
        kept = {name: x for name, x in train.items() if _flat(x).shape[1] <= MAX_PART_DIM}
        if not kept:
            raise ValueError(
                f"Invalid value for `train`: expected a part at most {MAX_PART_DIM} wide, "
                f"received widths { ({n: _flat(x).shape[1] for n, x in train.items()}) }"
            )
        densities = {n: FeatureDensity.fit(l2_normalize(_flat(x)), labels) for n, x in kept.items()}
        fitted = cls(densities, dict.fromkeys(densities, 0.0), dict.fromkeys(densities, 1.0))
        raw = fitted.part_scores(validation)
        location = {name: float(values.mean()) for name, values in raw.items()}
        scale = {name: float(values.std()) or 1.0 for name, values in raw.items()}
        return cls(densities, location, scale)

    def part_scores(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per part, the negative log density of its features (N, ...) -> (N,), unstandardised."""
        prepare = l2_normalize if self.normalized else np.asarray
        return {
            name: -density.log_density(prepare(_flat(features[name])))
            for name, density in self.densities.items()
        }

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The OOD score (N,): the parts standardised and summed; higher = less like training."""
        parts = self.part_scores(features)
        return sum((parts[n] - self.location[n]) / self.scale[n] for n in self.densities)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The parameters as named arrays, for saving next to the model."""
        arrays: dict[str, np.ndarray] = {"normalized": np.array(self.normalized)}
        for name, density in self.densities.items():
            arrays |= {f"{name}.{key}": value for key, value in density.to_arrays().items()}
            arrays[f"{name}.location"] = np.array(self.location[name])
            arrays[f"{name}.scale"] = np.array(self.scale[name])
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> OODScore:
        """Inverse of `to_arrays`; a file of a model saved before it (one raw density of
        the pooled base features, no `normalized` entry) loads as that density alone."""
        if "normalized" not in arrays:
            return cls({"base": FeatureDensity.from_arrays(arrays)}, {"base": 0.0}, {"base": 1.0},
                       normalized=False)  # fmt: skip
        names = [n for n in PARTS if f"{n}.location" in arrays]
        if not names:
            raise ValueError(
                f"Invalid value for `arrays`: expected at least one part of {PARTS}, "
                f"received keys {sorted(arrays)}"
            )
        densities = {
            n: FeatureDensity.from_arrays({k.split(".", 1)[1]: v for k, v in arrays.items()
                                           if k.startswith(f"{n}.")})
            for n in names
        }  # fmt: skip
        location = {n: float(arrays[f"{n}.location"]) for n in names}
        scale = {n: float(arrays[f"{n}.scale"]) for n in names}
        return cls(densities, location, scale, bool(arrays["normalized"]))


def _flat(features: np.ndarray) -> np.ndarray:
    """(N, ...) features as (N, D)."""
    features = np.asarray(features)
    return features.reshape(len(features), -1)
