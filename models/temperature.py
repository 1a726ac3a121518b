"""Temperature scaling (Guo et al. 2017): one scalar that softens or sharpens probabilities.

A sample's probabilities p become softmax(log p / tau): tau > 1 softens
(less confident), tau < 1 sharpens, tau = 1 changes nothing, and the most
probable class never changes. The network ends in a softmax, so log p are its
logits up to a per-row constant, which the softmax ignores. Its float32
output cannot tell a probability below float32's smallest normal number
from 0, so that is the floor taken.

On Monte Carlo samples (B, T, C) each dropout sample is tempered before the
samples are averaged; a deterministic answer is the case T = 1 (uqserve fits
one temperature for each, and serves only the MC one). It is fitted by minimising the NLL of the
predictive distribution on held-out data, in log space.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from models.uncertainty import nll

_TINY = float(np.finfo(np.float32).tiny)  # the smallest probability a float32 softmax tells
BOUNDS = (0.05, 20.0)  # temperatures searched by `fit_temperature`


def check_temperature(temperature: float) -> float:
    """`temperature` as a float, or a Keras-style error unless it is a finite number > 0."""
    number = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
    if not (number and math.isfinite(temperature)) or temperature <= 0:
        raise ValueError(
            "Invalid value for `temperature`: expected a finite number > 0, "
            f"received temperature={temperature!r}"
        )
    return float(temperature)


def temper(samples: np.ndarray, temperature: float) -> np.ndarray:
    """Samples (B, T, C) with each row's probabilities raised to 1/tau and renormalised.

    Computed as softmax(log p / tau) in float64; tau = 1 returns the input
    (as float64) unchanged, so an untempered model costs nothing.
    """
    temperature = check_temperature(temperature)
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3:
        raise ValueError(
            f"Invalid value for `samples`: expected shape (B, T, C), received shape={samples.shape}"
        )
    if temperature == 1.0:
        return samples
    logits = np.log(np.maximum(samples, _TINY))  # (B, T, C), up to a per-row constant
    return np.exp(log_softmax(logits / temperature, axis=-1))


def fit_temperature(
    samples: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = BOUNDS
) -> float:
    """The temperature in `bounds` that minimises the NLL of `temper(samples, tau)`.

    A bounded scalar search over log tau (SciPy's Brent method); the result
    is kept only if it beats tau = 1 on these data, so fitting never raises
    their NLL. Fit on held-out data (not the training split, where the
    network is overconfident) and measure on other data.
    """
    if len(bounds) != 2:
        raise ValueError(f"Invalid value for `bounds`: expected (low, high), received {bounds}")
    low, high = (check_temperature(b) for b in bounds)
    if not low < 1.0 < high:
        raise ValueError(f"Invalid value for `bounds`: expected low < 1 < high, received {bounds}")
    samples = np.asarray(samples, dtype=np.float64)
    result = minimize_scalar(
        lambda log_tau: nll(temper(samples, math.exp(log_tau)), labels),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    fitted = math.exp(float(result.x))
    return fitted if nll(temper(samples, fitted), labels) < nll(samples, labels) else 1.0
