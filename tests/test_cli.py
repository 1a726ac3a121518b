"""The `uqserve` command: train, predict and pretrain through `main`, as a user runs them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from adapters.images import read_image
from training.cli import main, nest

TINY_FLAGS = [
    "--limit", "100", "--image-size", "32", "32", "--base-weights", "none",
    "--hidden-units", "16", "--dropout", "0.3", "--epochs", "1", "--mc-samples", "4",
    "--quiet",
]  # fmt: skip


def digit_png(path, index: int = 0) -> str:
    """A digit from scikit-learn's set as an 8-bit grayscale PNG."""
    digits = load_digits()
    pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
    Image.fromarray(pixels, mode="L").resize((32, 32)).save(path)
    return str(path)


def test_nest_builds_the_config_tree():
    assert nest({"head.activation": "elu", "epochs": 2}) == {
        "head": {"activation": "elu"},
        "epochs": 2,
    }


def test_train_then_predict_prints_every_figure_of_the_answer(tmp_path, capsys):
    code = main(["train", *TINY_FLAGS, "--model-name", "cli_test", "--output-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "exported: cli_test:" in out
    assert "test_accuracy" in out
    image = digit_png(tmp_path / "digit.png")
    assert main(["predict", image, "--model", "cli_test:latest", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("model: cli_test:") and "seed: 1" in lines[0]
    header, row = lines[1].split(), lines[2].split()
    assert header == ["image", "class", "confidence", "entropy", "aleatoric", "epistemic",
                      "uncertain", "ood_score", "ood", "set"]  # fmt: skip
    figures = dict(zip(header, row, strict=True))
    assert figures["image"] == image
    assert figures["class"] in {str(d) for d in range(10)}
    assert 0.0 < float(figures["confidence"]) <= 1.0
    assert float(figures["epistemic"]) >= 0.0
    assert float(figures["entropy"]) >= float(figures["aleatoric"]) - 1e-9
    assert float(figures["ood_score"]) == float(figures["ood_score"])  # a number: a density
    per_class = lines[lines.index(f"{image}:") + 2 :]  # after the block's header
    assert [line.split()[0] for line in per_class] == [str(d) for d in range(10)]
    probabilities = [float(line.split()[1]) for line in per_class]
    assert abs(sum(probabilities) - 1.0) < 1e-3  # printed to 4 decimals
    assert all(float(line.split()[2]) >= 0.0 for line in per_class)  # variances


def test_bad_flag_value_exits_2_naming_the_field(tmp_path, capsys):
    assert main(["train", *TINY_FLAGS, "--dropout", "1.5", "--output-dir", str(tmp_path)]) == 2
    assert "head.dropout_rates" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("head:\n  activation: elu\noptimizer:\n  name: adagrad\n")
    assert main(["train", "--config", str(config), *TINY_FLAGS]) == 2
    assert "optimizer.name" in capsys.readouterr().err


def test_predict_with_a_missing_model_says_how_to_train(tmp_path, capsys):
    image = digit_png(tmp_path / "digit.png")
    assert main(["predict", image, "--model", "absent_model:latest"]) == 1
    assert "uqserve train" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_read_image_converts_every_mode(tmp_path, mode):
    path = tmp_path / f"image-{mode.replace(';', '')}.png"
    Image.new(mode, (10, 7)).save(path)
    pixels = read_image(path)
    assert pixels.shape[:2] == (7, 10)
    assert pixels.ndim == 2 or pixels.shape[-1] in (3, 4)


def test_config_file_that_is_not_yaml_exits_2(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("head: [unclosed\n")
    assert main(["train", "--config", str(config), *TINY_FLAGS]) == 2
    assert "not valid YAML" in capsys.readouterr().err
