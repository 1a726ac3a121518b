"""Everything evaluation needs from one pass over a split: embeddings, deterministic
probabilities and Monte Carlo samples, with the deterministic part run once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.config import PreprocessingConfig
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import preprocess_images

CHUNK = 256  # images preprocessed at a time, to bound memory on large splits


@dataclass(frozen=True)
class SplitOutputs:
    """One split's outputs; `samples` is (N, 0, C) when none were drawn."""

    embeddings: np.ndarray  # (N, D) pooled base features
    deterministic: np.ndarray  # (N, C)
    samples: np.ndarray  # (N, T, C)
    hidden: np.ndarray  # (N, ...) the input of the first Dropout

    @property
    def features(self) -> dict[str, np.ndarray]:
        """The OOD score's inputs, by part (`models.density.OODScore`)."""
        return {"base": self.embeddings, "hidden": self.hidden}


def from_hidden(
    predictor: MCDropoutPredictor, hidden: np.ndarray, samples: int, seed: int, start: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """The deterministic answer (n, C) and `samples` MC draws (n, T, C; None when 0) of
    `hidden` rows; row i draws from the stream (seed, start + i), so an image's draws
    depend only on its place in its split."""
    deterministic = predictor.predict_from_hidden(hidden)
    if samples == 0:
        return deterministic, None
    rngs = [np.random.default_rng([seed, start + i]) for i in range(len(hidden))]
    return deterministic, predictor.sample_from_hidden(hidden, samples, rngs)


def predictor_outputs(
    predictor: MCDropoutPredictor,
    images: np.ndarray,
    preprocessing: PreprocessingConfig,
    samples: int,
    seed: int,
) -> SplitOutputs:
    """Embeddings, deterministic answer and `samples` MC draws (0: none) for raw images."""
    embeddings, deterministic, draws, hiddens = [], [], [], []
    for start in range(0, len(images), CHUNK):
        x = preprocess_images(images[start : start + CHUNK], preprocessing)
        embedded, hidden = predictor.forward(x)  # (n, D), (n, ...)
        embeddings.append(embedded)
        hiddens.append(hidden)
        answer, sampled = from_hidden(predictor, hidden, samples, seed, start)
        deterministic.append(answer)
        if sampled is not None:
            draws.append(sampled)
    classes = deterministic[0].shape[1]
    sampled = np.concatenate(draws) if draws else np.empty((len(images), 0, classes))
    return SplitOutputs(
        np.concatenate(embeddings), np.concatenate(deterministic), sampled, np.concatenate(hiddens)
    )
