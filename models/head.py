"""The trainable classification head: BN, dropout, max-norm, chosen init and activation.

The head is a `keras.Sequential`, so its layers form one chain. The Monte
Carlo predictor relies on that: it splits the chain at the first Dropout.
"""

from __future__ import annotations

import keras

from models.config import HeadConfig

HEAD_NAME = "head"


def _regularizer(config: HeadConfig) -> keras.regularizers.Regularizer | None:
    if config.regularizer == "l1":
        return keras.regularizers.L1(config.l1)
    if config.regularizer == "l2":
        return keras.regularizers.L2(config.l2)
    if config.regularizer == "l1_l2":
        return keras.regularizers.L1L2(l1=config.l1, l2=config.l2)
    return None


def _activation(config: HeadConfig, name: str) -> keras.layers.Layer:
    if config.activation == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=config.leaky_relu_slope, name=name)
    return keras.layers.Activation(config.activation, name=name)


def _pooling(config: HeadConfig) -> keras.layers.Layer:
    if config.pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool")
    if config.pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="pool")
    return keras.layers.Flatten(name="pool")


def _hidden_block(config: HeadConfig, index: int, units: int) -> list[keras.layers.Layer]:
    """Dense -> [BN] -> activation -> Dropout; the Dense has no bias when BN follows."""
    constraint = keras.constraints.MaxNorm(config.max_norm) if config.max_norm else None
    layers = [
        keras.layers.Dense(
            units,
            use_bias=not config.batch_norm,
            kernel_initializer=config.initializer,
            kernel_regularizer=_regularizer(config),
            kernel_constraint=constraint,
            name=f"dense_{index}",
        )
    ]
    if config.batch_norm:
        layers.append(keras.layers.BatchNormalization(name=f"bn_{index}"))
    layers.append(_activation(config, name=f"act_{index}"))
    layers.append(keras.layers.Dropout(config.dropout_rates[index], name=f"dropout_{index}"))
    return layers


def build_head(
    feature_shape: tuple[int, ...], num_classes: int, config: HeadConfig
) -> keras.Sequential:
    """The head that maps base feature maps (H', W', 512) to class probabilities."""
    layers: list[keras.layers.Layer] = [keras.Input(shape=feature_shape), _pooling(config)]
    if config.input_dropout is not None:
        layers.append(keras.layers.Dropout(config.input_dropout, name="dropout_input"))
    for index, units in enumerate(config.hidden_units):
        layers.extend(_hidden_block(config, index, units))
    layers.append(
        keras.layers.Dense(
            num_classes,
            activation="softmax",
            kernel_initializer="glorot_uniform",
            kernel_regularizer=_regularizer(config),
            name="probabilities",
        )
    )
    return keras.Sequential(layers, name=HEAD_NAME)
