"""What a request hands the adaptive batch, and how one batch is answered.

A request becomes one `ImageJob` per image: its decoded pixels (in [0, 255],
any size), the request's seed and T, and its place in the request. The
dispatcher (`service.batching`) merges the jobs of concurrent requests (and
may split a request across two batches), and a batch is answered in two steps:

    sample_jobs    every image preprocessed (one compiled call per image size),
                   then one compiled call: the deterministic part once per
                   image, the sampled suffix once per sample
    answer_jobs    the OOD scores

The service runs `answer_jobs` of one batch while `sample_jobs` of the next
runs (`service.batching`). Together they compute exactly what
`models.answer.sample_and_score` computes for `uqserve predict`.

Image `index` of a request with `seed` draws its dropout masks from the
stream (seed, index), exactly as `MCDropoutPredictor.sample(images, T,
seed=seed)` does, so a batched answer equals the answer the request gets alone
(bit for bit on TensorFlow, within float32 rounding on JAX).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.answer import density_scores
from models.density import OODScore
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import Preprocessor


@dataclass(frozen=True)
class ImageJob:
    """One image of a request, with what its answer needs."""

    pixels: np.ndarray  # (H, W) or (H, W, C), in [0, 255]
    seed: int
    index: int  # its place in the request: its dropout stream is (seed, index)
    samples: int


@dataclass(frozen=True)
class ImageAnswer:
    """One image's samples and OOD score."""

    draws: np.ndarray  # (T, C) sampled probabilities
    score: np.float32  # NaN without a density


def request_jobs(images: Sequence[np.ndarray], seed: int, samples: int) -> list[ImageJob]:
    """A request's images -> its jobs, in request order."""
    return [ImageJob(pixels, seed, index, samples) for index, pixels in enumerate(images)]


@dataclass(frozen=True)
class Sampled:
    """A batch's samples and features: what `sample_jobs` hands `answer_jobs`."""

    draws: list[np.ndarray]  # per image (T_i, C)
    embeddings: np.ndarray  # (N, D) pooled base features
    hidden: np.ndarray  # (N, ...) input of the first Dropout


def sample_jobs(
    preprocess: Preprocessor, predictor: MCDropoutPredictor, jobs: Sequence[ImageJob]
) -> Sampled:
    """Preprocess every image of the batch; the deterministic part once, then the samples."""
    images = preprocess([job.pixels for job in jobs])  # (N, H, W, 3)
    streams = [(job.seed, job.index) for job in jobs]
    return Sampled(*predictor.sample_each(images, [job.samples for job in jobs], streams))


def answer_jobs(density: OODScore | None, sampled: Sampled) -> list[ImageAnswer]:
    """The OOD scores -> one `ImageAnswer` per job, in order."""
    scores = density_scores(density, sampled.embeddings, sampled.hidden)  # (N,)
    return [ImageAnswer(d, s) for d, s in zip(sampled.draws, scores, strict=True)]


def stack_answers(answers: Sequence[ImageAnswer]) -> tuple[np.ndarray, np.ndarray]:
    """A request's answers (same T) -> samples (n, T, C), OOD scores (n,) float32."""
    return np.stack([a.draws for a in answers]), np.array([a.score for a in answers], np.float32)
