"""`uqserve compare`: the chapter's exercises as controlled experiments.

The frozen base runs once per image (its feature maps cached); every run then trains
only a head, so the whole default suite fits in minutes on a CPU. Each variant
runs with several fixed seeds; tables report mean ± std.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from rich.progress import Progress

from models.architecture import compose
from models.backbone import build_base
from models.head import build_head
from models.mc_dropout import MCDropoutPredictor
from models.preprocessing import rgb_at_size
from models.uncertainty import expected_calibration_error, nll, summarize
from training.base_maps import base_maps
from training.config import TrainConfig, deep_merge
from training.data import Dataset, load_dataset, split_dataset
from training.outputs import SplitOutputs, from_hidden
from training.plots import plot_experiment
from training.progress import progress_bar
from training.report import table
from training.shift_evaluation import MC_GRID, fit_temperatures, predictors
from training.shifts import conditions
from training.train import fit_on_base_maps

GLOROT_HE = ("glorot_uniform", "he_normal")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu")
HIGH_RATE = {"name": "sgd", "learning_rate": 0.5, "momentum": 0.9}


def _recipe(
    one: float | None = None, patience: int | None = None, epochs: int = 30,
    norm: float | None = 3.0, on_features: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A whole head-and-stopping recipe for `mc_dropout`, independent of the defaults: one
    hidden block at dropout `one`, else two of 256 units at 0.5; early stopping with
    `patience` (None: all `epochs`); max-norm `norm`; dropout `on_features` on the features."""
    units, rates = ((256,), (one,)) if one is not None else ((256, 256), (0.5, 0.5))
    head = {"hidden_units": units, "dropout_rates": rates, "max_norm": norm,
            "input_dropout": on_features}  # fmt: skip
    return {"head": head, "early_stopping_patience": patience, "epochs": epochs}


EXPERIMENTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "optimizers": [
        (name, {"optimizer": {"name": name}})
        for name in ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "nadam")
    ],
    "bn_dropout": [
        ("BN + dropout", {"head": {"hidden_units": (256, 256), "dropout_rates": (0.5, 0.5)}}),
        ("BN only", {"head": {"hidden_units": (256, 256), "dropout_rates": (0.0, 0.0)}}),
        (
            "dropout only",
            {
                "head": {
                    "batch_norm": False,
                    "hidden_units": (256, 256),
                    "dropout_rates": (0.5, 0.5),
                }
            },
        ),
        (
            "neither",
            {
                "head": {
                    "batch_norm": False,
                    "hidden_units": (256, 256),
                    "dropout_rates": (0.0, 0.0),
                }
            },
        ),
    ],
    "schedules": [
        (name, {"optimizer": {"schedule": name}})
        for name in ("constant", "exponential", "piecewise", "onecycle", "plateau")
    ],
    "init_activation": [
        (f"{init} + {act}", {"head": {"initializer": init, "activation": act}})
        for init in GLOROT_HE
        for act in ACTIVATIONS
    ],
    "clipping": [
        ("no clipping, lr 0.5", {"optimizer": {**HIGH_RATE, "name": "momentum"}}),
        ("clipnorm 1.0, lr 0.5", {"optimizer": {**HIGH_RATE, "name": "momentum", "clipnorm": 1.0}}),
    ],
    "mc_dropout": [
        ("one block, 0.5, early stopping", _recipe(one=0.5, patience=5)),
        ("one block, 0.3, early stopping", _recipe(one=0.3, patience=5)),
        ("one block, 0.7, early stopping", _recipe(one=0.7, patience=5)),
        (
            "one block, input 0.2 + 0.5, early stopping",
            _recipe(one=0.5, patience=5, on_features=0.2),
        ),
        ("two blocks, 0.5 each, early stopping", _recipe(patience=5)),
        ("one block, 0.5, max-norm 1, early stopping", _recipe(one=0.5, patience=5, norm=1.0)),
        ("one block, 0.5, no max-norm, early stopping", _recipe(one=0.5, patience=5, norm=None)),
        (
            "one block, 0.5, early stopping on accuracy",
            {**_recipe(one=0.5, patience=5), "early_stopping_monitor": "val_accuracy"},
        ),
        ("one block, 0.5, 15 epochs", _recipe(one=0.5, epochs=15)),
        ("one block, 0.5, 30 epochs", _recipe(one=0.5)),
        ("one block, 0.5, 50 epochs", _recipe(one=0.5, epochs=50)),
        ("one block, 0.5, 100 epochs", _recipe(one=0.5, epochs=100)),
        ("one block, 0.3, 30 epochs", _recipe(one=0.3)),
        ("one block, 0.5, max-norm 1, 30 epochs", _recipe(one=0.5, norm=1.0)),
        ("two blocks, 0.5 each, 30 epochs (default)", _recipe()),
    ],
}


# One planned run: experiment, variant, its config change, seed.
Run = tuple[str, str, dict[str, Any], int]
Results = dict[str, dict[str, list[dict[str, Any]]]]  # experiment -> variant -> one per seed


UNCERTAINTY_EXPERIMENTS = ("mc_dropout",)  # runs that also measure predictors under shift


@dataclass(frozen=True)
class Cached:
    """The base's feature maps and the labels of the three splits; for the uncertainty
    experiments also the base and the test split's maps under each shift."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: int
    base: keras.Model | None = None
    shifted: dict[str, np.ndarray] | None = None  # "rotation 3" -> maps of the test split


def cache_features(
    config: TrainConfig, progress: Progress | None = None, shifts: bool = False,
    quick: bool = False,
) -> Cached:  # fmt: skip
    """Run the frozen base once over every split (one `progress` task per split) and,
    with `shifts`, over the test split under each shift (`quick`: two per shift)."""
    data = load_dataset(config.data.dataset, config.preprocessing)
    splits = split_dataset(data, config.data, config.seed)
    base = build_base((*config.preprocessing.image_size, 3), config.base_weights)
    named = {"train": splits.train, "val": splits.validation, "test": splits.test}
    parts = []
    for name, part in named.items():
        maps = base_maps(
            base, part, config.preprocessing, progress=progress, description=f"base maps: {name}"
        )
        parts.append((maps, part.labels))
    if not shifts:
        return Cached(*parts, classes=len(data.class_names))
    shifted = shifted_maps(base, splits.test, config, progress, quick)
    return Cached(*parts, classes=len(data.class_names), base=base, shifted=shifted)


def shifted_maps(
    base: keras.Model, test: Dataset, config: TrainConfig, progress: Progress | None, quick: bool
) -> dict[str, np.ndarray]:
    """The base's maps of the test split under each (shift, intensity), keyed "name i"."""
    prep = config.preprocessing
    clean = keras.ops.convert_to_numpy(rgb_at_size(test.images, prep))  # (N, H, W, 3)
    chosen = conditions(quick)
    task = None if progress is None else progress.add_task("shifted test maps", total=len(chosen))
    maps = {}
    for shift, intensity in chosen:
        moved = Dataset(shift.apply(clean, intensity, config.seed), test.labels, test.class_names)
        maps[f"{shift.name} {intensity}"] = base_maps(base, moved, prep)
        if progress is not None and task is not None:
            progress.advance(task)
    return maps


def run_once(cached: Cached, config: TrainConfig, uncertainty: bool = False) -> dict[str, Any]:
    """Train one head; its curves, best validation accuracy, test NLL and ECE, wall time;
    with `uncertainty`, also every predictor's figures clean and under shift."""
    keras.utils.set_random_seed(config.seed)
    head = build_head(cached.train[0].shape[1:], cached.classes, config.head)
    start = time.perf_counter()
    history = fit_on_base_maps(head, cached.train, cached.validation, config, None, verbose=0)
    seconds = time.perf_counter() - start
    probs = head.predict(cached.test[0], verbose=0)  # deterministic (B, C)
    val_accuracy = history.history["val_accuracy"]
    loss = np.nan_to_num(history.history["loss"], nan=np.inf).tolist()
    return {
        "val_accuracy": [float(v) for v in val_accuracy],
        "loss": [float(v) for v in loss],
        "best_val_accuracy": float(np.max(val_accuracy)),
        "epochs_to_best": int(np.argmax(val_accuracy)) + 1,
        "test_nll": nll(probs[:, None], cached.test[1]),
        "test_ece": expected_calibration_error(probs, cached.test[1]),
        "seconds": seconds,
        **(uncertainty_figures(head, cached, config) if uncertainty else {}),
    }


def _outputs(
    predictor: MCDropoutPredictor, maps: np.ndarray, samples: int, seed: int
) -> SplitOutputs:
    """Deterministic answer and `samples` MC draws from cached base maps (image i: stream
    (seed, i), as `training.outputs.predictor_outputs` draws them)."""
    hidden = predictor.hidden_from_maps(maps)
    deterministic, draws = from_hidden(predictor, hidden, samples, seed)  # (N, C), (N, T, C)
    return SplitOutputs(np.empty((len(hidden), 0)), deterministic, draws, hidden)


def uncertainty_figures(head: keras.Model, cached: Cached, config: TrainConfig) -> dict[str, float]:
    """NLL and ECE of every predictor of `training.shift_evaluation` on the clean test
    split and averaged over the shifted conditions, keyed "clean_nll/<predictor>" etc.

    Temperatures are fitted on the validation split; MC draws use the run's seed.
    """
    if cached.base is None or cached.shifted is None:
        raise ValueError("Invalid value for `cached`: expected `cache_features(..., shifts=True)`")
    predictor = MCDropoutPredictor(compose(cached.base, head))
    compared = predictors(MC_GRID, config.mc_samples)
    most = max(p.samples or 1 for p in compared)
    validation = _outputs(predictor, cached.validation[0], config.mc_samples, config.seed)
    temperatures = fit_temperatures(validation, cached.validation[1], config.mc_samples)
    clean = _outputs(predictor, cached.test[0], most, config.seed)
    shifted = [_outputs(predictor, maps, most, config.seed) for maps in cached.shifted.values()]
    labels, figures = cached.test[1], {}
    for p in compared:
        for group, parts in (("clean", [clean]), ("shifted", shifted)):
            rows = [summarize(p.read(outputs, temperatures), labels) for outputs in parts]
            for metric in ("nll", "ece"):
                figures[f"{group}_{metric}/{p.name}"] = float(np.mean([r[metric] for r in rows]))
    figures.update({f"temperature/{k}": v for k, v in temperatures.items()})
    return figures


def plan(names: list[str], seeds: list[int], quick: bool = False) -> list[Run]:
    """Every run of the chosen experiments, in order (`quick`: the first two variants each)."""
    return [
        (name, variant, change, seed)
        for name in dict.fromkeys(names)  # each experiment once, in the order given
        for variant, change in (EXPERIMENTS[name][:2] if quick else EXPERIMENTS[name])
        for seed in seeds
    ]


def run_all(cached: Cached, base: dict[str, Any], runs: list[Run], progress: Progress) -> Results:
    """Every planned run, with one bar over all of them that names the run in progress."""
    task = progress.add_task("runs", total=len(runs))
    results: Results = {}
    for experiment, variant, change, seed in runs:
        progress.update(task, description=f"{experiment}: {variant}, seed {seed}")
        config = TrainConfig.model_validate(deep_merge(deep_merge(base, change), {"seed": seed}))
        figures = run_once(cached, config, experiment in UNCERTAINTY_EXPERIMENTS)
        results.setdefault(experiment, {}).setdefault(variant, []).append(figures)
        progress.advance(task)
    progress.update(task, description="runs")
    return results


def summary_rows(results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    """Mean ± std of each figure over seeds, one row per variant."""
    figures = {"best_val_accuracy": 4, "epochs_to_best": 1, "test_nll": 4, "test_ece": 4,
               "seconds": 1}  # fmt: skip
    rows = []
    for name, runs in results.items():
        cells = []
        for figure, digits in figures.items():
            values = np.array([run[figure] for run in runs], dtype=float)
            cells.append(f"{values.mean():.{digits}f} ± {values.std():.{digits}f}")
        rows.append([name, *cells])
    return rows


def compare(
    base: dict[str, Any],
    output: Path,
    seeds: list[int],
    names: list[str],
    quick: bool = False,
    quiet: bool = False,
) -> Path:
    """Run the chosen experiments, write one PNG each, a Markdown report and JSON.

    One device only: the heads are small, and replicas would change the batch
    size and learning rate that the experiments hold fixed. A progress bar on
    stderr (unless `quiet` or not a terminal) counts the base maps, then the runs.
    """
    config = TrainConfig.model_validate(base)
    if config.strategy != "default":
        raise ValueError(
            "Invalid value for `strategy`: compare runs on one device, expected 'default', "
            f"received strategy={config.strategy!r}"
        )
    with progress_bar(quiet) as bar:
        shifts = any(name in UNCERTAINTY_EXPERIMENTS for name in names)
        cached = cache_features(config, bar, shifts, quick)
        results = run_all(cached, base, plan(names, seeds, quick), bar)
    return write_report(output, config, seeds, results)


UNCERTAINTY_TABLES = {
    "clean_nll": "Test NLL, clean",
    "shifted_nll": "Test NLL, mean over the shifted conditions",
    "clean_ece": "Test ECE, clean",
    "shifted_ece": "Test ECE, mean over the shifted conditions",
}


def uncertainty_tables(results: dict[str, list[dict[str, Any]]]) -> str:
    """Per figure (clean/shifted NLL and ECE), a table of variants (rows) by predictors
    (columns), mean ± std over seeds; empty for runs without those figures."""
    first = next(iter(results.values()))[0]
    names = [key.split("/", 1)[1] for key in first if key.startswith("clean_nll/")]
    if not names:
        return ""
    out = []
    for figure, title in UNCERTAINTY_TABLES.items():
        rows = []
        for variant, runs in results.items():
            values = [np.array([run[f"{figure}/{name}"] for run in runs]) for name in names]
            rows.append([variant, *(f"{v.mean():.4f} ± {v.std():.4f}" for v in values)])
        out.append(f"**{title}**\n\n" + table(["variant", *names], rows))
    return "\n\n" + "\n\n".join(out)


def write_report(output: Path, config: TrainConfig, seeds: list[int], results: Results) -> Path:
    """One PNG per experiment, `results.json` and `report.md` (returned) under `output`."""
    output.mkdir(parents=True, exist_ok=True)
    header = ["variant", "best val acc", "epochs to best", "test NLL", "test ECE", "wall s"]
    sections = []
    for name, variants in results.items():
        plot_experiment(name, variants, output / f"{name}.png")
        sections.append(
            f"## {name}\n\n{table(header, summary_rows(variants))}\n\n![{name}]({name}.png)"
            + uncertainty_tables(variants)
        )
    (output / "results.json").write_text(json.dumps(results, indent=2))
    intro = (
        f"# uqserve compare\n\nDataset `{config.data.dataset}`, {len(seeds)} seeds {seeds}, "
        f"up to {config.epochs} epochs, early stopping patience {config.early_stopping_patience}; "
        "heads trained on cached feature maps of the frozen base. Mean ± std over seeds.\n"
    )
    report = output / "report.md"
    report.write_text(intro + "\n" + "\n\n".join(sections) + "\n")
    return report
