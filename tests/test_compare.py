"""A tiny `uqserve compare --quick` run writes its tables and plots."""

from __future__ import annotations

import json

import numpy as np

from training.cli import main
from training.compare import EXPERIMENTS, plan


def test_compare_quick_writes_report_tables_and_plots(tmp_path, capsys):
    """Also: with output captured (not a terminal) no per-run chatter and no progress bar."""
    output = tmp_path / "compare"
    code = main([
        "compare", "--quick", "--seeds", "2", "--experiments", "optimizers", "clipping",
        "--output-report", str(output),
    ])  # fmt: skip
    assert code == 0
    results = json.loads((output / "results.json").read_text())
    assert set(results) == {"optimizers", "clipping"}
    assert list(results["clipping"]) == [name for name, _ in EXPERIMENTS["clipping"]]
    for runs in results["optimizers"].values():
        assert len(runs) == 2  # one per seed
        for run in runs:
            assert 0.0 <= run["best_val_accuracy"] <= 1.0
            assert 1 <= run["epochs_to_best"] <= len(run["val_accuracy"])
    report = (output / "report.md").read_text()
    assert "| sgd |" in report and "±" in report
    assert (output / "optimizers.png").stat().st_size > 1000
    assert (output / "clipping.png").stat().st_size > 1000
    captured = capsys.readouterr()
    assert "report:" in captured.out
    for text in (captured.out, captured.err):
        assert "Restoring model weights" not in text  # EarlyStopping, once per run before
        assert "━" not in text  # the progress bar stays off when stderr is not a terminal


def test_plan_lists_every_run_once_in_order():
    runs = plan(["clipping", "optimizers", "clipping"], [0, 1], quick=True)
    names = [(experiment, variant, seed) for experiment, variant, _, seed in runs]
    clipping = [name for name, _ in EXPERIMENTS["clipping"]]
    assert names[:4] == [("clipping", v, s) for v in clipping for s in (0, 1)]
    assert len(names) == 8 and len(set(names)) == 8
    assert len(plan(list(EXPERIMENTS), [0, 1, 2])) == 3 * sum(map(len, EXPERIMENTS.values()))


def test_every_experiment_variant_is_a_valid_config():
    from training.config import TrainConfig, deep_merge

    for variants in EXPERIMENTS.values():
        for _, change in variants:
            TrainConfig.model_validate(deep_merge({}, change))
    assert set(EXPERIMENTS) == {
        "optimizers", "bn_dropout", "schedules", "init_activation", "clipping", "mc_dropout"
    }  # fmt: skip


def test_compare_mc_dropout_reports_every_predictor_clean_and_shifted(tmp_path):
    output = tmp_path / "compare"
    code = main([
        "compare", "--quick", "--seeds", "2", "--experiments", "mc_dropout",
        "--output-report", str(output), "--mc-samples", "5",
    ])  # fmt: skip
    assert code == 0
    results = json.loads((output / "results.json").read_text())
    names = ["deterministic", "deterministic + temperature", "MC T=5", "MC T=10", "MC T=30",
             "MC T=100", "MC T=5 + temperature"]  # fmt: skip
    for runs in results["mc_dropout"].values():
        for run in runs:
            for group in ("clean", "shifted"):
                for name in names:
                    assert (
                        np.isfinite(run[f"{group}_nll/{name}"]) and run[f"{group}_nll/{name}"] > 0
                    )
                    assert 0.0 <= run[f"{group}_ece/{name}"] <= 1.0
            assert 0.05 <= run["temperature/mc"] <= 20.0
    report = (output / "report.md").read_text()
    assert "**Test NLL, mean over the shifted conditions**" in report
    assert "| variant | " + " | ".join(names) + " |" in report  # predictors are columns
    assert "| one block, 0.5, early stopping |" in report
