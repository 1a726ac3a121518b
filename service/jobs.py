"""What the API service sends the model service: one row per image.

BentoML's adaptive batching concatenates a batchable API's single argument
along axis 0, so everything an image needs travels in its row:

    jobs (N, 3 + H*W*3) float64: [seed, index, samples, preprocessed pixels...]

Image `index` of a request with `seed` draws its dropout masks from the stream
(seed, index), exactly as `MCDropoutPredictor.sample(images, T, seed=seed)`
does, so a batched answer equals the answer the request gets alone. float64
holds every seed up to `models.answer.MAX_SEED` (2**53 - 1) and float32 pixels exactly.

The answer is (N, 1 + T_max * C) float32: column 0 is the image's OOD score
(NaN when the model has no feature density), then its (T_max, C) samples,
flattened; images that asked for fewer samples than the largest in the batch
are padded with NaN after their T.
"""

from __future__ import annotations

import numpy as np

HEADER = 3


def pack(images: np.ndarray, seed: int, samples: int) -> np.ndarray:
    """Preprocessed images (N, H, W, 3) of one request -> job rows (N, 3 + H*W*3)."""
    count = len(images)
    header = np.column_stack(
        [np.full(count, seed), np.arange(count), np.full(count, samples)]
    ).astype(np.float64)
    return np.concatenate([header, images.reshape(count, -1).astype(np.float64)], axis=1)


def unpack(
    jobs: np.ndarray, input_shape: tuple[int, int, int]
) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    """Job rows -> images (N, H, W, 3) float32, per-image (seed, index), samples (N,)."""
    jobs = np.asarray(jobs, dtype=np.float64)
    expected = HEADER + int(np.prod(input_shape))
    if jobs.ndim != 2 or jobs.shape[1] != expected:
        raise ValueError(
            f"Invalid value for `jobs`: expected shape (N, {expected}), received {jobs.shape}"
        )
    streams = [(int(seed), int(index)) for seed, index in jobs[:, :2]]
    samples = jobs[:, 2].astype(np.int64)
    images = jobs[:, HEADER:].astype(np.float32).reshape((len(jobs), *input_shape))
    return images, streams, samples


def split_answer(answer: np.ndarray, samples: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A request's rows of the batch answer -> OOD scores (n,), samples (n, T, C)."""
    answer = np.asarray(answer, dtype=np.float32)
    draws = answer[:, 1:].reshape(len(answer), -1, classes)  # (n, T_max, C)
    return answer[:, 0], draws[:, :samples]


def join_answer(draws: list[np.ndarray], ood_scores: np.ndarray) -> np.ndarray:
    """Per-image (T_i, C) samples and OOD scores (N,) -> (N, 1 + T_max * C), NaN-padded."""
    longest = max(len(d) for d in draws)
    classes = draws[0].shape[1]
    padded = np.full((len(draws), longest, classes), np.nan, dtype=np.float32)
    for i, d in enumerate(draws):
        padded[i, : len(d)] = d
    flat = padded.reshape(len(draws), -1)
    return np.concatenate([np.asarray(ood_scores, np.float32)[:, None], flat], axis=1)
