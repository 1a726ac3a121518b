"""A tiny `uqserve evaluate` run produces its report, tables and plots, with the guarantees."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import bentoml
import numpy as np
import pytest
from PIL import Image

from adapters.model_store import StoredModel
from models.conformal import ConformalCalibration
from models.guarantees import calibrate
from models.mc_dropout import MCDropoutPredictor
from models.temperature import temper
from models.uncertainty import mean_probabilities, nll
from tests.conftest import TINY
from tests.test_training import tiny_config
from training.cli import main
from training.evaluate import (
    VALIDITY_ALPHAS,
    acceptance,
    coverage_at_risk,
    rebuilt_splits,
    risk_coverage_curves,
    validity_check,
)
from training.outputs import predictor_outputs
from training.pipeline import TrainResult, run_training
from training.plots import plot_risk_coverage
from training.report import CORRUPTION_PLOT, RISK_PLOT, ROTATION_PLOT, SET_PLOT, guarantees_section
from training.shifts import conditions

NEW_PLOTS = (SET_PLOT, RISK_PLOT)


@dataclass(frozen=True)
class Evaluated:
    """One tiny model trained once and evaluated once through the CLI."""

    training: TrainResult
    folder: Path  # the report folder
    code: int
    stdout: str
    ood_folder: Path

    @property
    def metrics(self) -> dict:
        return json.loads((self.folder / "metrics.json").read_text())

    @property
    def report(self) -> str:
        return (self.folder / "report.md").read_text()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    tmp_path = tmp_path_factory.mktemp("evaluate")
    result = run_training(
        tiny_config(export=True, output_dir=tmp_path, model_name="eval_test"), verbose=0
    )
    folder = tmp_path / "ood"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([
            "evaluate", "--model", "eval_test:latest", "--samples", "1", "3",
            "--ood-folder", str(folder), "--output", str(tmp_path / "reports"),
            "--shift", "--quick",
        ])  # fmt: skip
    report_dir = tmp_path / "reports" / result.tag.replace(":", "_")
    return Evaluated(result, report_dir, code, stdout.getvalue(), folder)


def test_evaluate_writes_report_metrics_and_plots(evaluated):
    assert evaluated.code == 0
    for name in ("report.md", "metrics.json", "reliability_deterministic.png",
                 "reliability_mc.png", "abstention.png"):  # fmt: skip
        assert (evaluated.folder / name).stat().st_size > 0, name
    metrics = evaluated.metrics
    assert set(metrics["calibration"]) == {"deterministic", "mc_T1", "mc_T3"}
    assert set(metrics["ood"]) == {"photo_crops", "noise", f"folder:{evaluated.ood_folder.name}"}
    for table in metrics["ood"].values():
        assert set(table) == {"max_probability", "predictive_entropy", "mutual_information",
                              "feature_density", "density_base", "density_hidden"}  # fmt: skip
        for row in table.values():
            assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["fpr95"] <= 1.0
    assert len(metrics["abstention"]["mutual_information"]) == len(metrics["rejected_fractions"])
    stored = bentoml.models.get(evaluated.training.tag).info.metadata["evaluation"]
    assert stored["test_nll_mc_T3"] == metrics["calibration"]["mc_T3"]["nll"]
    assert "| mc_T3 |" in evaluated.report and "feature_density" in evaluated.report
    assert "report:" in evaluated.stdout


def test_evaluate_reports_and_plots_the_guarantees(evaluated):
    text = evaluated.report
    assert "## Guarantees" in text and "| alpha | 1 - alpha | coverage (MC) |" in text
    assert "Validity check: passed" in text and "### Risk-coverage" in text
    for name in NEW_PLOTS:
        assert (evaluated.folder / name).stat().st_size > 10_000, name
        assert f"]({name})" in text
    stored = bentoml.models.get(evaluated.training.tag).info.metadata["evaluation"]
    figures = evaluated.metrics["guarantees"]
    alpha = f"{evaluated.training.card.guarantees.default_alpha:g}"  # 1/17: n=16 here
    assert stored[f"coverage@{alpha}"] == figures["sets"]["mc"][alpha]["coverage"]
    assert stored[f"set_size@{alpha}"] == figures["sets"]["mc"][alpha]["set_size"]
    assert stored["accepted_fraction"] == figures["acceptance"]["mc"]["accepted_fraction"]
    assert stored["accepted_error_rate"] == figures["acceptance"]["mc"]["accepted_error_rate"]
    assert stored["validity_passed"] is True and stored["calibration_reproduced"] is True


def test_evaluate_reproduces_the_stored_calibration(evaluated):
    figures = evaluated.metrics["guarantees"]
    for row in figures["reproduced"].values():
        assert row == {"scores_equal": True, "max_difference": 0.0, "rule_equal": True}
    # and independently: the calibration split rerun as training ran it, refit by hand
    stored = StoredModel.open(evaluated.training.tag)
    card = stored.card
    splits, config = rebuilt_splits(card)
    outputs = predictor_outputs(
        stored.predictor(), splits.calibration.images, card.model.preprocessing,
        card.mc_samples, config.seed,
    )  # fmt: skip
    refit = ConformalCalibration.fit(
        mean_probabilities(outputs.samples),
        splits.calibration.labels,
        card.guarantees.mc.sets.method,
    )
    assert refit.scores == card.guarantees.mc.sets.scores
    assert figures["calibration_size"] == len(splits.calibration.labels)


def test_evaluate_coverage_per_alpha_and_class(evaluated):
    figures = evaluated.metrics["guarantees"]
    n = figures["calibration_size"]  # ~15 of 100 digits: alpha >= 1/16 only
    expected = {f"{a:g}" for a in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3) if a >= 1 / (n + 1)}
    assert expected == {"0.1", "0.15", "0.2", "0.3"}
    expected.add(f"{1 / (n + 1):g}")  # the model's default alpha, raised to 1/(n+1), is shown
    for name in ("mc", "single"):
        assert set(figures["sets"][name]) == expected
        for row in figures["sets"][name].values():
            assert 0.0 <= row["coverage"] <= 1.0 and 0.0 <= row["set_size"] <= 10.0
    assert any("alpha = 0.01, 0.02, 0.05 below the allowed range" in note
               for note in figures["notes"])  # fmt: skip
    assert "alpha = 0.01, 0.02, 0.05 below the allowed range" in evaluated.report
    classes = figures["class_coverage"]
    assert list(classes) == list(evaluated.training.card.class_names)
    assert sum(row["test_images"] for row in classes.values()) == 15
    for row in classes.values():
        assert row["test_images"] > 0 and 0.0 <= row["mc"] <= 1.0 and 0.0 <= row["single"] <= 1.0


def test_evaluate_validity_check_within_its_interval(evaluated):
    figures = evaluated.metrics["guarantees"]
    validity = figures["validity"]
    assert set(validity) == {"0.1", "0.2"}  # 0.05 < 1/(n+1): skipped, with a note
    assert any("Validity check at alpha = 0.05 skipped" in note for note in figures["notes"])
    for alpha, row in validity.items():
        assert row["resplits"] >= 100 and row["calibration_size"] == figures["calibration_size"]
        assert row["lower"] == pytest.approx(1 - float(alpha))
        assert row["upper"] == pytest.approx(1 - float(alpha) + 1 / (row["calibration_size"] + 1))
        assert row["tolerance"] == pytest.approx(3 * row["standard_error"])
        assert (
            row["lower"] - row["tolerance"]
            <= row["mean_coverage"]
            <= row["upper"] + row["tolerance"]
        )
        assert row["passed"] is True


def test_evaluate_risk_coverage_tables(evaluated):
    figures = evaluated.metrics["guarantees"]
    assert set(figures["risk_coverage"]) == {"deterministic", "single", "mc"}
    for scores in figures["risk_coverage"].values():
        assert set(scores) == {"mutual_information", "predictive_entropy",
                               "one_minus_max_probability"}  # fmt: skip
        for row in scores.values():
            assert all(0.0 <= value <= 1.0 for value in row.values())
    for name, row in figures["acceptance"].items():
        rule = getattr(evaluated.training.card.guarantees, name).risk
        assert row["score"] == rule.score and row["target_risk"] == rule.target_risk
        assert 0.0 <= row["accepted_fraction"] <= 1.0


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_validity_check_passes_on_exchangeable_data(method):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(5, 0.5), size=400)  # (400, 5)
    labels = np.array([rng.choice(5, p=p) for p in probs])  # drawn from the model: calibrated
    checks = validity_check(probs, labels, 49, method, seed=1, resplits=150)
    assert set(checks) == {f"{a:g}" for a in VALIDITY_ALPHAS}
    for row in checks.values():
        assert row["passed"] and row["resplits"] == 150 and row["standard_error"] > 0.0
    assert set(validity_check(probs, labels, 9, method, seed=1, resplits=100)) == {"0.1", "0.2"}


def test_report_says_when_there_are_no_guarantees():
    text = guarantees_section(None)
    assert text.startswith("## Guarantees") and "Skipped" in text


def _confident_samples(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples (n, 4, 3) of a mostly right, mostly confident model, and labels (n,)."""
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0.0, 1.0, (n, 4, 3))
    logits[np.arange(n), :, labels] += rng.uniform(0.0, 8.0, n)[:, None]
    samples = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    return samples, labels


def test_certified_rule_is_measured_and_marked(tmp_path):
    rng = np.random.default_rng(3)
    held, held_labels = _confident_samples(rng, 2000)
    test, test_labels = _confident_samples(rng, 1000)
    calibrated = calibrate(held, held_labels, "lac", 0.1, 0.05, rng)
    row = acceptance(calibrated, test, test_labels)
    assert row["threshold"] is not None and row["score"] == calibrated.risk.score
    assert 0.0 < row["accepted_fraction"] <= 1.0 and row["accepted_error_rate"] < 0.15
    curves = risk_coverage_curves(test, test_labels)
    best = coverage_at_risk(*curves[row["score"]], [0.1])["0.1"]
    assert best >= row["accepted_fraction"] - 0.05  # the oracle does at least about as well
    point = (row["accepted_fraction"], row["accepted_error_rate"])
    path = plot_risk_coverage({"MC": curves}, {"MC": point}, 0.1, tmp_path / "risk.png")
    assert path.stat().st_size > 10_000


def test_evaluate_measures_the_served_answer_at_every_t(evaluated):
    rows = evaluated.metrics["guarantees"]["by_samples"]
    assert set(rows) == {"1", "3"}  # the --samples grid of this run
    assert rows["1"]["calibrated"] is True  # T=1: the single-sample calibration
    assert rows["3"]["calibrated"] is False  # the card's T is 5: T=3 borrows it
    for row in rows.values():
        assert 0.0 <= row["coverage"] <= 1.0 and 0.0 <= row["accepted_fraction"] <= 1.0
    assert "### Served at other T" in evaluated.report
    assert "no (uses T=5)" in evaluated.report


SHIFT_PREDICTORS = {"deterministic", "deterministic + temperature", "MC T=3", "MC T=5",
                    "MC T=5 + temperature"}  # fmt: skip


def test_evaluate_shift_measures_every_predictor_on_every_condition(evaluated):
    figures = evaluated.metrics["shift"]
    rows = figures["conditions"]
    assert [(r["shift"], r["intensity"]) for r in rows] == [("clean", 0)] + [
        (s.name, i) for s, i in conditions(quick=True)
    ]
    card = evaluated.training.card
    tempered = card.temperature != 1.0  # soften: served only when above 1
    assert figures["served"] == ("MC T=5 + temperature" if tempered else "MC T=5")  # card's T
    if tempered:  # the served temperature is the MC one compared, not a refit
        assert figures["temperatures"]["mc"] == card.temperature
    ruled = {"MC T=5 + temperature"} if tempered else {"MC T=3", "MC T=5"}
    for row in rows:
        assert set(row["predictors"]) == SHIFT_PREDICTORS
        assert 0.0 <= row["ood_fraction"] <= 1.0
        for name, cell in row["predictors"].items():
            assert 0.0 <= cell["accuracy"] <= 1.0 and 0.0 <= cell["ece"] <= 1.0
            assert np.isfinite(cell["nll"]) and cell["nll"] > 0.0
            assert 0.0 <= cell["coverage"] <= 1.0 and 0.0 <= cell["set_size"] <= 10.0
            assert ("uncertain_fraction" in cell) == (name in ruled)
    assert set(figures["ood_sets"]) == {
        "photo_crops",
        "noise",
        f"folder:{evaluated.ood_folder.name}",
    }
    for temperature in figures["temperatures"].values():
        assert 0.05 <= temperature <= 20.0


def test_evaluate_shift_clean_condition_is_the_plain_evaluation(evaluated):
    clean = evaluated.metrics["shift"]["conditions"][0]["predictors"]
    plain = evaluated.metrics["calibration"]  # as served: tempered by the card's temperature
    assert clean["deterministic"]["nll"] == pytest.approx(plain["deterministic"]["nll"], rel=1e-3)
    raw = MCDropoutPredictor(StoredModel.open(evaluated.training.tag).network())
    splits, _ = rebuilt_splits(evaluated.training.card)
    outputs = predictor_outputs(raw, splits.test.images, TINY, 3, 0)  # evaluate's seed 0
    assert clean["MC T=3"]["nll"] == pytest.approx(
        nll(outputs.samples, splits.test.labels), rel=1e-3
    )
    served = temper(outputs.samples, evaluated.training.card.temperature)
    assert plain["mc_T3"]["nll"] == pytest.approx(nll(served, splits.test.labels), rel=1e-3)


def test_evaluate_shift_summary_report_plots_and_headline(evaluated):
    figures = evaluated.metrics["shift"]
    for name, row in figures["summary"].items():
        shifted = [r["predictors"][name]["nll"] for r in figures["conditions"][1:]]
        assert row["shifted_nll"] == pytest.approx(np.mean(shifted))
        assert row["clean_nll"] == figures["conditions"][0]["predictors"][name]["nll"]
    assert "## Under distribution shift" in evaluated.report
    for plot in (ROTATION_PLOT, CORRUPTION_PLOT):
        assert (
            evaluated.folder / plot
        ).stat().st_size > 10_000 and f"]({plot})" in evaluated.report
    stored = bentoml.models.get(evaluated.training.tag).info.metadata["evaluation"]
    assert stored["shifted_nll_mc"] == figures["summary"][figures["served"]]["shifted_nll"]
    assert "shifted," in evaluated.stdout
