"""The pure parts of `make container-test`: answer checks, shell exports, bento facts."""

from __future__ import annotations

import pytest

from deploy.container.bento import bento_model, image_tags
from deploy.container.checks import check_prediction
from deploy.container.engine import ContainerError, parse_exports

CLASSES = ["a", "b", "c"]


def _body(**changes) -> dict:
    prediction = {"label": "b", "class_index": 1, "probabilities": [0.2, 0.7, 0.1],
                  "variance": [0.01, 0.02, 0.0]}  # fmt: skip
    prediction.update(changes)
    return {"samples": 8, "seed": 3, "predictions": [prediction]}


def test_a_good_answer_passes():
    assert check_prediction(_body(), CLASSES, 8, 3)["label"] == "b"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"probabilities": [0.2, 0.7, 0.2]}, "sum to"),
        ({"variance": [0.01, -0.1, 0.0]}, "negative variance"),
        ({"probabilities": [0.3, 0.7]}, "2 probabilities"),
        ({"label": "c"}, "is not class 1"),
    ],
)
def test_a_wrong_answer_is_named(changes, named):
    with pytest.raises(ContainerError, match=named):
        check_prediction(_body(**changes), CLASSES, 8, 3)


def test_samples_and_seed_must_be_echoed():
    with pytest.raises(ContainerError, match="seed 3 != 4"):
        check_prediction(_body(), CLASSES, 8, 4)


def test_parse_exports_reads_shell_quoting_and_ignores_the_rest():
    text = "log line\nexport A='x y'\nexport B=/p/q\nexport C\n"
    assert parse_exports(text) == {"A": "x y", "B": "/p/q"}


def test_bento_facts():
    services = [{"models": [{"tag": "m:1"}]}, {"models": [{"tag": "m:1"}]}]  # both hold it
    info = {"version": "v1", "services": services}
    assert bento_model(info) == "m:1"
    assert image_tags(info) == ["uqserve:v1", "uqserve:latest"]
    with pytest.raises(ContainerError, match="one model"):
        bento_model({"services": [{"models": []}]})
