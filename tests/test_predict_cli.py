"""`uqserve predict` and `POST /predict` give one answer: same decoder, same builder, same seed."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from adapters.images import decode_image
from tests.service_helpers import encode
from training.cli import main


def _sixteen_bit() -> bytes:
    """A 16-bit grayscale PNG whose values run far above 255 (a gradient up to 65535)."""
    values = np.linspace(0, 65535, 24 * 20).reshape(20, 24).astype(np.uint16)
    return encode(Image.fromarray(values), "PNG")  # uint16 -> mode I;16


def _cmyk() -> bytes:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    return encode(Image.fromarray(pixels, mode="CMYK"), "JPEG")


def _palette() -> bytes:
    rng = np.random.default_rng(6)
    image = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).convert("P")
    return encode(image, "PNG", transparency=0)


def _rgba() -> bytes:
    rng = np.random.default_rng(7)
    return encode(Image.fromarray(rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)), "PNG")


def _animated() -> bytes:
    frames = [Image.new("RGB", (24, 20), colour) for colour in ((250, 40, 0), (0, 0, 250))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


FILES = {"gray16.png": _sixteen_bit, "cmyk.jpg": _cmyk, "palette.png": _palette,
         "rgba.png": _rgba, "animated.gif": _animated}  # fmt: skip


def test_sixteen_bit_keeps_its_bright_values():
    pixels = decode_image(_sixteen_bit(), "gray16.png")
    assert pixels.max() == pytest.approx(255.0)  # 65535 -> 255, not clipped at 256/257
    assert len(np.unique(pixels.round())) > 200  # a gradient, not a white image


def _both(client, tag: str, blobs: dict[str, bytes], folder, capsys) -> tuple[dict, dict]:
    """The same files, samples and seed, answered by `uqserve predict --json` and the service."""
    paths = []
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
        paths.append(str(folder / name))
    assert (
        main(["predict", *paths, "--model", tag, "--samples", "5", "--seed", "11", "--json"]) == 0
    )
    local = json.loads(capsys.readouterr().out)
    files = [("files", (name, io.BytesIO(blob))) for name, blob in blobs.items()]
    response = client.post("/predict", files=files, data={"samples": "5", "seed": "11"})
    assert response.status_code == 200, response.text
    return local, response.json()


@pytest.mark.parametrize("names", [list(FILES)[:3], list(FILES)[3:]])  # the tests' 4-image limit
def test_command_line_and_service_answer_alike(client, tag, tmp_path, capsys, names):
    local, served = _both(client, tag, {name: FILES[name]() for name in names}, tmp_path, capsys)
    assert (local["model"], local["samples"], local["seed"]) == (served["model"], 5, 11)
    assert len(local["predictions"]) == len(served["predictions"]) == len(names)
    assert local["predictions"] == served["predictions"]  # every figure, to the last bit


def test_the_table_shows_every_figure(tag, tmp_path, capsys):
    path = tmp_path / "rgba.png"
    path.write_bytes(_rgba())
    assert main(["predict", str(path), "--model", tag, "--samples", "4", "--seed", "2"]) == 0
    table = capsys.readouterr().out
    for column in ("confidence", "entropy", "aleatoric", "epistemic", "ood_score", "variance"):
        assert column in table
    assert "seed: 2" in table
    for name in ("ant", "bee", "cat", "dog"):  # one per-class row each
        assert f"  {name} " in table


def test_a_file_that_is_not_an_image_is_named(tag, tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    assert main(["predict", str(path), "--model", tag]) == 1
    assert "notes.txt: not a supported image" in capsys.readouterr().err


def test_samples_and_seed_follow_the_service_rules(tag, tmp_path, capsys):
    path = tmp_path / "rgba.png"
    path.write_bytes(_rgba())
    assert main(["predict", str(path), "--model", tag, "--seed", "-1"]) == 2
    assert "seed: Input should be greater than or equal to 0" in capsys.readouterr().err
    assert main(["predict", str(path), "--model", tag, "--samples", "0"]) == 2  # not "default"
    assert "samples: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_an_alpha_the_model_cannot_answer_exits_2_naming_the_range(tag, tmp_path, capsys):
    path = tmp_path / "rgba.png"
    path.write_bytes(_rgba())
    assert main(["predict", str(path), "--model", tag, "--alpha", "0.001"]) == 2
    assert "1/(n+1)=" in capsys.readouterr().err
