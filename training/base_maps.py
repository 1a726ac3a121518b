"""Training inputs: the frozen base's feature maps (cached) or images preprocessed on the fly."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from rich.progress import Progress

from models.config import PreprocessingConfig
from models.preprocessing import preprocess_batch
from training.data import Dataset
from training.progress import progress_bar


def base_maps(
    base: keras.Model,
    dataset: Dataset,
    preprocessing: PreprocessingConfig,
    batch_size: int = 64,
    *,
    progress: Progress | None = None,
    description: str = "base maps",
) -> np.ndarray:
    """The frozen base's output for every image, computed once (feature caching).

    With the base frozen and no augmentation these never change, so each epoch
    only has to run the small head. It is the slow part of a run on a CPU, so
    it counts images on `progress` (a task named `description`); None: no bar.
    """
    if progress is None:
        progress = progress_bar(quiet=True)  # counts, shows nothing
    task = progress.add_task(description, total=len(dataset.images))
    chunks = []
    for start in range(0, len(dataset.images), batch_size):
        x = preprocess_batch(dataset.images[start : start + batch_size], preprocessing)
        chunks.append(keras.ops.convert_to_numpy(base(x, training=False)))
        progress.advance(task, len(chunks[-1]))
    return np.concatenate(chunks, axis=0)


def image_pipeline(
    dataset: Dataset,
    preprocessing: PreprocessingConfig,
    batch_size: int,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """(preprocessed images, labels) batches, preprocessed on the fly with the shared function."""
    pipeline = tf.data.Dataset.from_tensor_slices((dataset.images, dataset.labels))
    if shuffle_seed is not None:
        pipeline = pipeline.shuffle(len(dataset.labels), seed=shuffle_seed)
    pipeline = pipeline.batch(batch_size).map(
        lambda x, y: (preprocess_batch(x, preprocessing), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    return pipeline.prefetch(tf.data.AUTOTUNE)
