"""The shared preprocessing function."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from models.config import PreprocessingConfig
from models.preprocessing import Preprocessor, preprocess_images
from tests.backends import jax_only, tensorflow_only

CONFIG = PreprocessingConfig(image_size=(32, 32))


def _rgb(seed: int = 0, size: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, size, size, 3)).astype("float32")


def test_output_has_the_model_input_size():
    out = preprocess_images(_rgb(size=50), CONFIG)
    assert out.shape == (2, 32, 32, 3)
    assert out.dtype == np.float32


def test_same_size_rgb_is_vgg16_preprocess_input():
    rgb = _rgb(size=32)
    expected = keras.ops.convert_to_numpy(keras.applications.vgg16.preprocess_input(rgb.copy()))
    np.testing.assert_allclose(preprocess_images(rgb, CONFIG), expected, atol=1e-3)


def test_grayscale_equals_rgb_with_repeated_channels():
    gray = _rgb()[..., 0]
    as_rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(
        preprocess_images(gray, CONFIG), preprocess_images(as_rgb, CONFIG), atol=1e-4
    )
    np.testing.assert_allclose(
        preprocess_images(gray[..., None], CONFIG), preprocess_images(as_rgb, CONFIG), atol=1e-4
    )


def test_rgba_is_composited_over_the_background():
    rgb = _rgb()
    opaque = np.concatenate([rgb, np.full((*rgb.shape[:-1], 1), 255.0, "float32")], axis=-1)
    np.testing.assert_allclose(
        preprocess_images(opaque, CONFIG), preprocess_images(rgb, CONFIG), atol=1e-4
    )
    clear = opaque.copy()
    clear[..., 3] = 0.0
    background = np.zeros_like(rgb)
    np.testing.assert_allclose(
        preprocess_images(clear, CONFIG), preprocess_images(background, CONFIG), atol=1e-4
    )


def test_images_of_different_sizes_in_one_list():
    images = [_rgb(0, 10)[0], _rgb(1, 64)[0][..., 0], _rgb(2, 33)[0]]
    out = preprocess_images(images, CONFIG)
    assert out.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(out[0], preprocess_images(images[0][None], CONFIG)[0], atol=1e-5)


def test_large_same_sized_images_are_preprocessed_in_bounded_groups(monkeypatch):
    from models import preprocessing

    monkeypatch.setattr(preprocessing, "GROUP_PIXELS", 2 * 20 * 20)  # two 20x20 images a call
    images = [_rgb(i, 20)[0] for i in range(5)] + [_rgb(9, 10)[0]]
    assert preprocessing._same_size_groups(images) == [[0, 1], [2, 3], [4], [5]]
    out = preprocess_images(images, CONFIG)
    for i, image in enumerate(images):
        np.testing.assert_allclose(out[i], preprocess_images(image[None], CONFIG)[0], atol=1e-5)


def test_a_list_keeps_its_order_when_sizes_repeat():
    images = [_rgb(0, 10)[0], _rgb(1, 20)[0], _rgb(2, 10)[0], _rgb(3, 20)[0]]
    out = preprocess_images(images, CONFIG)
    for i, image in enumerate(images):
        np.testing.assert_allclose(out[i], preprocess_images(image[None], CONFIG)[0], atol=1e-5)


@pytest.mark.parametrize("preprocess", [preprocess_images, Preprocessor(CONFIG)])
def test_bad_inputs_are_rejected(preprocess):
    run = preprocess if isinstance(preprocess, Preprocessor) else lambda x: preprocess(x, CONFIG)
    with pytest.raises(ValueError, match="expected 1, 3 or 4 channels, received channels=2"):
        run(np.zeros((1, 8, 8, 2), "float32"))
    with pytest.raises(ValueError, match=r"received shape=\(8, 8\)"):
        run(np.zeros((8, 8), "float32"))
    with pytest.raises(ValueError, match="at least one image"):
        run([])


def _mixed_images() -> list[np.ndarray]:
    """Grayscale with and without a channel axis, RGB, RGBA, uint8, several sizes."""
    rng = np.random.default_rng(7)
    alpha = rng.integers(0, 256, (12, 9, 1))
    return [
        _rgb(0, 10)[0][..., 0],
        _rgb(1, 33)[0][..., :1],
        _rgb(2, 50)[0],
        np.concatenate([_rgb(3, 12)[0][:, :9], alpha], axis=-1).astype("float32"),
        _rgb(4, 10)[0].astype("uint8"),
        _rgb(5, 10)[0][..., 0],
    ]


def test_the_compiled_preprocessor_equals_the_eager_function():
    preprocessor, images = Preprocessor(CONFIG), _mixed_images()
    np.testing.assert_allclose(preprocessor(images), preprocess_images(images, CONFIG), atol=1e-3)
    batch = _rgb(6, 20)
    np.testing.assert_allclose(preprocessor(batch), preprocess_images(batch, CONFIG), atol=1e-3)


@tensorflow_only("counts tf.function retracing; the JAX test of compiles is below")
@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_after_warm_up_no_size_traces_the_graph_again(channels):
    preprocessor = Preprocessor(CONFIG)
    preprocessor.warm_up()
    graph = preprocessor._graphs[channels or 1]
    compiled = graph.predict_function
    traced = compiled.experimental_get_tracing_count()
    for batch, size in ((3, 10), (1, 40), (5, 7)):
        shape = (batch, size, size + 1) + ((channels,) if channels else ())
        preprocessor(np.zeros(shape, "uint8"))
    assert graph.predict_function is compiled
    assert compiled.experimental_get_tracing_count() == traced


@jax_only
def test_on_jax_an_image_size_compiles_once_whatever_the_batch(monkeypatch):
    """JAX compiles per input shape: images go through one at a time, so batches of 1, 2
    and 5 images of one size, alone or mixed with others, trace the graph once."""
    from models import preprocessing

    traced = []
    original = preprocessing.preprocess_batch
    monkeypatch.setattr(
        preprocessing, "preprocess_batch", lambda *a: traced.append(1) or original(*a)
    )
    pixels = np.random.default_rng(5).integers(0, 256, (5, 20, 20, 3)).astype("float32")
    small = np.zeros((7, 7, 3), "float32")
    preprocessor = Preprocessor(CONFIG)
    first = preprocessor(pixels[:1])
    once = len(traced)
    assert once > 0
    answers = [preprocessor(batch) for batch in (pixels[:2], pixels, [pixels[0], pixels[3]])]
    assert len(traced) == once
    mixed = preprocessor([pixels[0], small])
    assert len(traced) > once  # the 7x7 image's program
    assert [len(a) for a in (*answers, mixed)] == [2, 5, 2, 2]
    np.testing.assert_allclose(answers[1], preprocess_images(pixels, CONFIG), atol=1e-3)
    np.testing.assert_array_equal(mixed[:1], first)
