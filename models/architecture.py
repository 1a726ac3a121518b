"""The full classifier: image -> frozen VGG16 base -> head -> class probabilities."""

from __future__ import annotations

import keras

from models.backbone import BASE_NAME, build_base
from models.config import ModelConfig
from models.head import HEAD_NAME, build_head

MODEL_NAME = "uqserve_vgg16"


def build_model(config: ModelConfig, base_weights: str = "imagenet") -> keras.Model:
    """Compose base and head; the base is always called with `training=False`."""
    base = build_base(config.input_shape, base_weights)
    head = build_head(tuple(base.output.shape[1:]), config.num_classes, config.head)
    return compose(base, head)


def compose(base: keras.Model, head: keras.Model) -> keras.Model:
    """Chain a base and a head into one model, as exported and served."""
    inputs = keras.Input(shape=tuple(base.input.shape[1:]), name="image")
    features = base(inputs, training=False)
    outputs = head(features)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


def get_base(model: keras.Model) -> keras.Model:
    """The convolutional base of a model built by `build_model`."""
    return model.get_layer(BASE_NAME)


def get_head(model: keras.Model) -> keras.Sequential:
    """The classification head of a model built by `build_model`."""
    return model.get_layer(HEAD_NAME)
