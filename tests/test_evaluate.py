"""A tiny `uqserve evaluate` run produces its report, tables and plots."""

from __future__ import annotations

import json

import bentoml
import numpy as np
from PIL import Image

from tests.test_training import tiny_config
from training.cli import main
from training.pipeline import run_training


def test_evaluate_writes_report_metrics_and_plots(tmp_path, capsys):
    result = run_training(
        tiny_config(export=True, output_dir=tmp_path, model_name="eval_test"), verbose=0
    )
    folder = tmp_path / "ood"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    code = main([
        "evaluate", "--model", "eval_test:latest", "--samples", "1", "3",
        "--ood-folder", str(folder), "--output", str(tmp_path / "reports"),
    ])  # fmt: skip
    assert code == 0
    report_dir = tmp_path / "reports" / result.tag.replace(":", "_")
    for name in ("report.md", "metrics.json", "reliability_deterministic.png",
                 "reliability_mc.png", "abstention.png"):  # fmt: skip
        assert (report_dir / name).stat().st_size > 0, name
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert set(metrics["calibration"]) == {"deterministic", "mc_T1", "mc_T3"}
    assert set(metrics["ood"]) == {"photo_crops", "noise", f"folder:{folder.name}"}
    for table in metrics["ood"].values():
        assert set(table) == {"max_probability", "predictive_entropy",
                              "mutual_information", "feature_density"}  # fmt: skip
        for row in table.values():
            assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["fpr95"] <= 1.0
    assert len(metrics["abstention"]["mutual_information"]) == len(metrics["rejected_fractions"])
    stored = bentoml.models.get(result.tag).info.metadata["evaluation"]
    assert stored["test_nll_mc_T3"] == metrics["calibration"]["mc_T3"]["nll"]
    text = (report_dir / "report.md").read_text()
    assert "| mc_T3 |" in text and "feature_density" in text
    assert "report:" in capsys.readouterr().out
