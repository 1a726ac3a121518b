"""Transfer learning as in Géron ch. 11: train the head on the frozen base, then
optionally fine-tune the top conv blocks at a lower learning rate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models.architecture import build_model, get_base, get_head
from models.backbone import unfreeze_top_blocks
from models.config import ModelConfig
from training.base_maps import base_maps, image_pipeline
from training.config import TrainConfig
from training.data import Splits
from training.distribute import make_strategy, scale_for_replicas
from training.optimizers import build_optimizer, schedule_callbacks
from training.progress import progress_bar

LOSS = "sparse_categorical_crossentropy"
# Callbacks that print on their own ("Restoring model weights from the end of the best epoch").
CHATTY = (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau)


class EpochTimer(keras.callbacks.Callback):
    """Records each epoch's wall time into the logs as `epoch_seconds`."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


@dataclass
class History:
    """Per-epoch logs of every phase, concatenated; `phases` marks where each starts."""

    logs: dict[str, list[float]] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)

    def extend(self, phase: str, history: keras.callbacks.History) -> None:
        """Append one `fit` call's history as a named phase."""
        self.phases[phase] = len(self.logs.get("loss", []))
        for key, values in history.history.items():
            self.logs.setdefault(key, []).extend(float(v) for v in values)


def _callbacks(config: TrainConfig, log_dir: Path | None) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = [
        EpochTimer(),
        *schedule_callbacks(config.optimizer),
    ]
    if config.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=config.early_stopping_monitor,
                patience=config.early_stopping_patience,
                restore_best_weights=True,
                verbose=1,
            )
        )
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
    return callbacks


def _quiet_if(
    verbose: int, callbacks: list[keras.callbacks.Callback]
) -> list[keras.callbacks.Callback]:
    """`callbacks`, with the chatty ones silenced when the fit itself is silent (`verbose` 0).

    EarlyStopping and ReduceLROnPlateau print whatever `fit` is told; callers such
    as `uqserve compare` run many quiet fits and show their own progress instead.
    """
    if verbose == 0:
        for callback in callbacks:
            if isinstance(callback, CHATTY):
                callback.verbose = 0
    return callbacks


def build_for(config: TrainConfig, num_classes: int) -> keras.Model:
    """The model a run trains: frozen base (`config.base_weights`) plus the configured head."""
    model_config = ModelConfig(
        num_classes=num_classes, preprocessing=config.preprocessing, head=config.head
    )
    return build_model(model_config, config.base_weights)


def fit_head(
    model: keras.Model, splits: Splits, config: TrainConfig, log_dir: Path | None, verbose: int
) -> keras.callbacks.History:
    """Phase 1: only the head learns; the base stays frozen.

    With `cache_features` the base runs once per image and the head trains on
    its cached feature maps; otherwise images flow through the whole model each epoch.
    """
    if not config.cache_features:
        return _fit_on_images(model, splits, config, config.epochs, None, log_dir, verbose)
    base = get_base(model)
    with progress_bar(quiet=verbose == 0) as bar:
        train_x = base_maps(
            base, splits.train, config.preprocessing, progress=bar, description="maps: train"
        )
        val_x = base_maps(
            base,
            splits.validation,
            config.preprocessing,
            progress=bar,
            description="maps: val",
        )
    return fit_on_base_maps(
        get_head(model), (train_x, splits.train.labels), (val_x, splits.validation.labels),
        config, log_dir, verbose,
    )  # fmt: skip


def fit_on_base_maps(
    head: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    log_dir: Path | None,
    verbose: int,
) -> keras.callbacks.History:
    """Train a head on the base's cached feature maps (maps, labels) with the run's optimizer.

    Under a strategy, call it inside `strategy.scope()` (as `train_model` does) with
    the head built there; `batch_size` is then the global batch, split across replicas.
    """
    steps = int(np.ceil(len(train[1]) / config.batch_size)) * config.epochs
    head.compile(build_optimizer(config.optimizer, steps), LOSS, metrics=["accuracy"])
    return head.fit(
        *train,
        validation_data=validation,
        batch_size=config.batch_size,
        epochs=config.epochs,
        shuffle=True,
        callbacks=_quiet_if(verbose, _callbacks(config, log_dir)),
        verbose=verbose,
    )


def _fit_on_images(
    model: keras.Model,
    splits: Splits,
    config: TrainConfig,
    epochs: int,
    learning_rate: float | None,
    log_dir: Path | None,
    verbose: int,
) -> keras.callbacks.History:
    """Train the whole model on images preprocessed on the fly (learning_rate None: config's)."""
    steps = int(np.ceil(len(splits.train.labels) / config.batch_size)) * epochs
    model.compile(
        build_optimizer(config.optimizer, steps, learning_rate), LOSS, metrics=["accuracy"]
    )
    return model.fit(
        image_pipeline(splits.train, config.preprocessing, config.batch_size, config.seed),
        validation_data=image_pipeline(splits.validation, config.preprocessing, 256),
        epochs=epochs,
        shuffle=False,  # the pipeline shuffles
        callbacks=_quiet_if(verbose, _callbacks(config, log_dir)),
        verbose=verbose,
    )


def fine_tune(
    model: keras.Model, splits: Splits, config: TrainConfig, log_dir: Path | None, verbose: int
) -> keras.callbacks.History:
    """Phase 2: unfreeze the top conv blocks, train at a lower rate; head BN stays in inference.

    A BatchNormalization with `trainable=False` runs in inference mode in Keras 3,
    so the head's moving statistics are kept, as the chapter recommends.
    """
    unfreeze_top_blocks(get_base(model), config.fine_tune_blocks)
    for layer in get_head(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    history = _fit_on_images(
        model, splits, config, config.fine_tune_epochs, config.fine_tune_learning_rate,
        log_dir, verbose,
    )  # fmt: skip
    get_base(model).trainable = False
    return history


def train_model(
    config: TrainConfig,
    splits: Splits,
    log_dir: Path | None = None,
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[keras.Model, History]:
    """Build, run phase 1 and (if `fine_tune_blocks` > 0) phase 2 under the run's strategy.

    The model and its optimizers are built inside `strategy.scope()`, so every
    variable is mirrored on each replica. Batch size and learning rates follow
    the scaling rule of `training.distribute`. `strategy` None: `config.strategy`.
    """
    if strategy is None:
        strategy = make_strategy(config.strategy)
    config = scale_for_replicas(config, strategy.num_replicas_in_sync)
    keras.utils.set_random_seed(config.seed)
    history = History()
    with strategy.scope():
        model = build_for(config, len(splits.train.class_names))
        history.extend("head", fit_head(model, splits, config, log_dir, verbose))
        if config.fine_tune_blocks > 0:
            history.extend("fine_tune", fine_tune(model, splits, config, log_dir, verbose))
    return model, history
