"""`uqserve train` on digits with the real ImageNet base, as a user runs it.

Runs whenever UQSERVE_BASE_WEIGHTS names a weights file (CI sets it to
../shared/weights/vgg16_imagenet_notop.weights.h5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from adapters.model_store import StoredModel
from deploy import processes
from tests.test_cli import digit_png
from training.config import BASE_WEIGHTS_ENV
from training.data import held_out_split

WEIGHTS = os.environ.get(BASE_WEIGHTS_ENV, "")
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(WEIGHTS).is_file(),
        reason=f"{BASE_WEIGHTS_ENV} does not name a weights file (CI sets it)",
    ),
]


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_train_on_digits_with_imagenet_base_exports_an_accurate_model(tmp_path):
    out = _run(str(BIN / "uqserve"), "train", "--quiet", "--output-dir", str(tmp_path))
    run_dir = Path(out.split("run folder: ")[1].splitlines()[0])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.95
    assert metrics["test_mc_accuracy"] >= 0.95

    listing = _run(str(BIN / "bentoml"), "models", "list", "uqserve_vgg16", "-o", "json")
    tags = [entry["tag"] for entry in json.loads(listing)]
    assert any(tag.startswith("uqserve_vgg16:") for tag in tags)
    info = json.loads(
        _run(str(BIN / "bentoml"), "models", "get", "uqserve_vgg16:latest", "-o", "json")
    )
    assert info["metadata"]["class_names"] == [str(d) for d in range(10)]
    assert info["metadata"]["input_shape"] == [64, 64, 3]

    image = digit_png(tmp_path / "seven.png", index=7)  # sklearn's digit 7 is a "7"
    answer = json.loads(_run(str(BIN / "uqserve"), "predict", image, "--seed", "0", "--json"))
    assert answer["predictions"][0]["label"] == "7"

    # The trained model answers the same with a bfloat16 base (UQSERVE_BASE_DTYPE).
    precision = tmp_path / "precision"
    _run(str(BIN / "python"), "-m", "training.precision",
         "--model", "uqserve_vgg16:latest", "--base-dtype", "bfloat16",
         "--output", str(precision))  # fmt: skip
    check = json.loads((precision / "bfloat16.json").read_text())
    assert check["top1_agreement_mc"] >= 0.99
    assert abs(check["bfloat16"]["accuracy"] - check["float32"]["accuracy"]) <= 0.01
    assert abs(check["bfloat16"]["nll"] - check["float32"]["nll"]) <= 0.01
    assert 0.0 < check["max_abs_diff_mc_mean"] <= 0.1

    # The guarantees, served over HTTP on the test split (never seen by calibration).
    _check_served_guarantees(tmp_path)


def _served_answers(url: str, images: np.ndarray) -> list[dict]:
    """`POST /predict_array` in requests of 32 images (the service's default limit), seed 0."""
    answers = []
    images = images if images.ndim == 4 else images[..., None]  # (N, H, W, C): digits are gray
    for start in range(0, len(images), 32):
        body = {"images": images[start : start + 32].tolist(), "seed": 0, "alpha": 0.1}
        response = httpx.post(f"{url}/predict_array", json=body, timeout=300)
        assert response.status_code == 200, response.text[:500]
        answers += response.json()["predictions"]
    return answers


def _check_served_guarantees(workdir: Path) -> None:
    stored = StoredModel.open("uqserve_vgg16:latest")
    guarantees = stored.card.guarantees
    assert guarantees is not None and guarantees.mc.sets.n >= 250  # 15 % of 1,797 digits
    test = held_out_split(stored.card)
    port, log = processes.free_port(), workdir / "serve.log"
    process = processes.serve("service.service:ApiService", port, log,
                              {"UQSERVE_MODEL": stored.tag}, cwd=ROOT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_served(url, process, log)
        answers = _served_answers(url, test.images)
    finally:
        processes.stop_service(process)
    labels = [stored.card.class_names[y] for y in test.labels]
    n = len(labels)
    covered = np.mean([y in a["prediction_set"] for y, a in zip(labels, answers, strict=True)])
    assert all(a["set_size"] == len(a["prediction_set"]) for a in answers)  # reported per image
    assert covered >= 0.90 - 3 * np.sqrt(0.1 * 0.9 / n), covered  # marginal, up to 3 SE
    accepted = [y == a["label"] for y, a in zip(labels, answers, strict=True) if not a["uncertain"]]
    risk = guarantees.mc.risk
    assert risk.threshold is not None, risk.reason  # the default r* is certifiable on digits
    assert len(accepted) > 0.5 * n  # most answers accepted
    error = 1.0 - np.mean(accepted)
    assert error <= risk.target_risk + 3 * np.sqrt(risk.target_risk / len(accepted)), error
