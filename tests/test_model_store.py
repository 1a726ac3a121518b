"""Loading the served model: every missing or corrupt piece is named, no code runs from a file."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest

from adapters.model_store import (
    ModelLoadError,
    check_archive,
    load_card,
    load_density,
    load_predictor,
)
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "model.keras"
    tiny_model().save(path)
    return str(path)


def test_a_good_model_loads_with_the_same_answer(saved, images):
    predictor = load_predictor(saved, "t:1")
    expected = tiny_model().predict(images, verbose=0)
    np.testing.assert_allclose(predictor.predict(images), expected, atol=1e-5)


def test_the_base_dtype_setting_reaches_the_predictor(saved, images):
    from service.settings import ServiceSettings

    setting = ServiceSettings.from_env({"UQSERVE_BASE_DTYPE": "bfloat16"}).base_dtype
    predictor = load_predictor(saved, "t:1", setting)
    assert predictor.base_dtype == "bfloat16"
    expected = tiny_model().predict(images, verbose=0)
    np.testing.assert_allclose(predictor.predict(images), expected, atol=0.05)
    with pytest.raises(ValueError, match="base_dtype"):
        ServiceSettings.from_env({"UQSERVE_BASE_DTYPE": "int8"})


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"'t:1'.*missing\.keras is missing"):
        load_predictor(str(tmp_path / "missing.keras"), "t:1")


def test_not_an_archive_is_named(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"definitely not a zip")
    with pytest.raises(ModelLoadError, match="is not a Keras archive"):
        check_archive(str(path), "t:1")


def test_archive_without_weights_is_named(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ModelLoadError, match=r"lacks config\.json or model\.weights\.h5"):
        check_archive(str(path), "t:1")


def test_corrupt_weights_are_named(saved, tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[: len(data) // 3] if name.endswith(".h5") else data)
    with pytest.raises(ModelLoadError, match=r"cannot load .*model\.keras"):
        load_predictor(str(path), "t:1")


def test_safe_mode_refuses_code_in_the_file(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelLoadError, match="safe_mode"):
        load_predictor(str(path), "t:1")


def test_card_missing_or_invalid_is_named():
    with pytest.raises(ModelLoadError, match="no model card"):
        load_card(None, "t:1")
    with pytest.raises(ModelLoadError, match="model card is invalid"):
        load_card('{"class_names": 3}', "t:1")


def test_density_absent_is_none_and_corrupt_is_named(tmp_path):
    assert load_density(str(tmp_path / "density.npz"), "t:1") is None
    (tmp_path / "density.npz").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"density file .* is corrupt"):
        load_density(str(tmp_path / "density.npz"), "t:1")
    np.savez(tmp_path / "empty.npz", normalized=np.array(True))  # no part at all
    with pytest.raises(ModelLoadError, match=r"corrupt .*expected at least one part"):
        load_density(str(tmp_path / "empty.npz"), "t:1")
