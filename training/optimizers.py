"""Optimizers, learning-rate schedules and gradient clipping from `OptimizerConfig`.

Schedules are Keras' own: 1cycle is `CosineDecay` with a linear warm-up to the
peak rate (Keras has no 1cycle class; this is its standard warm-up/anneal
form). ReduceLROnPlateau is a callback, returned separately.
"""

from __future__ import annotations

from typing import Any

import keras

from training.config import OptimizerConfig


def build_schedule(
    config: OptimizerConfig, learning_rate: float, total_steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate (or schedule) over `total_steps` optimizer steps."""
    total_steps = max(total_steps, 1)
    schedules = keras.optimizers.schedules
    if config.schedule == "exponential":
        return schedules.ExponentialDecay(learning_rate, total_steps, config.decay_rate)
    if config.schedule == "piecewise":
        boundaries = sorted({max(1, int(b * total_steps)) for b in config.boundaries})
        values = [learning_rate * config.piecewise_factor**i for i in range(len(boundaries) + 1)]
        return schedules.PiecewiseConstantDecay(boundaries, values)
    if config.schedule == "cosine":
        return schedules.CosineDecay(learning_rate, total_steps)
    if config.schedule == "onecycle":
        warmup = int(config.warmup_fraction * total_steps)
        return schedules.CosineDecay(
            learning_rate / 10.0,
            decay_steps=max(total_steps - warmup, 1),
            alpha=1e-3,
            warmup_target=learning_rate,
            warmup_steps=warmup,
        )
    return learning_rate


def build_optimizer(
    config: OptimizerConfig, total_steps: int, learning_rate: float | None = None
) -> keras.optimizers.Optimizer:
    """SGD / momentum / Nesterov / RMSProp / Adam / AdamW / Nadam with clipping."""
    rate = build_schedule(config, learning_rate or config.learning_rate, total_steps)
    clip: dict[str, Any] = {}
    if config.clipnorm is not None:
        clip["clipnorm"] = config.clipnorm
    if config.clipvalue is not None:
        clip["clipvalue"] = config.clipvalue
    optimizers = keras.optimizers
    if config.name == "sgd":
        return optimizers.SGD(rate, **clip)
    if config.name in ("momentum", "nesterov"):
        nesterov = config.name == "nesterov"
        return optimizers.SGD(rate, momentum=config.momentum, nesterov=nesterov, **clip)
    if config.name == "rmsprop":
        return optimizers.RMSprop(rate, **clip)
    if config.name == "adamw":
        return optimizers.AdamW(rate, weight_decay=config.weight_decay, **clip)
    if config.name == "nadam":
        return optimizers.Nadam(rate, **clip)
    return optimizers.Adam(rate, **clip)


def schedule_callbacks(config: OptimizerConfig) -> list[keras.callbacks.Callback]:
    """ReduceLROnPlateau when that schedule is chosen; the others live in the optimizer."""
    if config.schedule != "plateau":
        return []
    return [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            verbose=1,
        )
    ]
