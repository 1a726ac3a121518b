"""The frozen VGG16 convolutional base and where its weights come from."""

from __future__ import annotations

from pathlib import Path

import keras

BASE_NAME = "vgg16"


class BaseWeightsError(RuntimeError):
    """The requested base weights could not be obtained."""


def _weights_argument(base_weights: str) -> str | None:
    """Map the user's choice ('imagenet', 'none' or a path) to Keras' `weights`."""
    if base_weights == "imagenet":
        return "imagenet"
    if base_weights.lower() == "none":
        return None
    path = Path(base_weights).expanduser()
    if not path.is_file():
        raise BaseWeightsError(
            "Invalid value for `base_weights`: expected 'imagenet', 'none' or the path of "
            f"a weights file, received base_weights={base_weights!r} (no such file)."
        )
    return str(path)


def build_base(input_shape: tuple[int, int, int], base_weights: str = "imagenet") -> keras.Model:
    """A VGG16 without its top, frozen (`trainable=False`).

    'imagenet' uses Keras' own download and cache; offline that fails with a
    message naming the alternatives instead of a stack trace.
    """
    weights = _weights_argument(base_weights)
    try:
        base = keras.applications.VGG16(
            include_top=False, weights=weights, input_shape=input_shape, name=BASE_NAME
        )
    except Exception as error:
        if weights != "imagenet":
            raise BaseWeightsError(
                f"Could not load base weights {base_weights!r}: {error}"
            ) from error
        raise BaseWeightsError(
            "Could not download the VGG16 ImageNet weights (no network?). Alternatives: "
            "--base-weights PATH to a VGG16 no-top .weights.h5 file, the environment "
            "variable UQSERVE_BASE_WEIGHTS=PATH, or --base-weights none (random init). "
            f"Cause: {error}"
        ) from error
    base.trainable = False
    return base


def conv_blocks(base: keras.Model) -> list[str]:
    """Names of the base's conv blocks, bottom to top ('block1' ... 'block5')."""
    return sorted({layer.name.split("_")[0] for layer in base.layers if "_conv" in layer.name})


def unfreeze_top_blocks(base: keras.Model, blocks: int) -> list[str]:
    """Make the top `blocks` conv blocks trainable, keep the rest frozen.

    Returns the names of the unfrozen blocks. The base is still called with
    `training=False`, so nothing in it switches to training behaviour.
    """
    names = conv_blocks(base)
    if not 0 <= blocks <= len(names):
        raise ValueError(
            f"Invalid value for `fine_tune_blocks`: expected 0 to {len(names)}, "
            f"received fine_tune_blocks={blocks}"
        )
    chosen = names[len(names) - blocks :]
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name.split("_")[0] in chosen
    return chosen
