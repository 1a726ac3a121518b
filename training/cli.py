"""The `uqserve` command: train, pretrain, predict.

Flags override values from `--config FILE` (YAML or JSON); only flags that are
given override anything. Bad values exit with status 2 and name the field.
TensorFlow's start-up logs stay hidden unless `uqserve --verbose COMMAND`; the
long commands draw progress bars on stderr when it is a terminal (`--quiet`: none).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError

from adapters.backend import require_tensorflow, select_backend
from adapters.quiet import quiet_tensorflow
from models.config import BaseDtype  # light: pydantic only
from models.conformal import AlphaError  # light: numpy and pydantic
from training.config import StrategyName  # light: pydantic and yaml only

NONE_WORDS = ("none", "null", "off")
TENSORFLOW_COMMANDS = ("train", "pretrain", "evaluate", "compare")  # tf.data, tf.distribute
VERBOSE_HELP = "show TensorFlow's own logs (CUDA, oneDNN, ...), hidden by default"


def _optional(kind: type) -> Any:
    """A flag type that also accepts 'none' (turns the feature off)."""

    def parse(text: str) -> Any:
        return None if text.lower() in NONE_WORDS else kind(text)

    parse.__name__ = kind.__name__
    return parse


# (flag, config path, argparse keyword arguments)
TRAIN_FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--dataset", "data.dataset", {"help": "digits | mnist | fashion_mnist | cifar10 | FOLDER"}),
    ("--limit", "data.limit", {"type": int, "help": "use at most N images"}),
    ("--image-size", "preprocessing.image_size", {"type": int, "nargs": 2, "metavar": ("H", "W")}),
    ("--base-weights", "base_weights", {"help": "imagenet | none | PATH (default: $UQSERVE_BASE_WEIGHTS, else imagenet)"}),  # noqa: E501
    ("--pooling", "head.pooling", {"choices": ("avg", "max", "flatten")}),
    ("--hidden-units", "head.hidden_units", {"type": int, "nargs": "+"}),
    ("--dropout", "head.dropout_rates", {"type": float, "nargs": "+", "help": "one rate per hidden layer"}),  # noqa: E501
    ("--input-dropout", "head.input_dropout", {"type": _optional(float)}),
    ("--activation", "head.activation", {"choices": ("relu", "leaky_relu", "elu", "selu", "gelu")}),
    ("--leaky-relu-slope", "head.leaky_relu_slope", {"type": float}),
    ("--initializer", "head.initializer", {}),
    ("--batch-norm", "head.batch_norm", {"action": argparse.BooleanOptionalAction}),
    ("--max-norm", "head.max_norm", {"type": _optional(float)}),
    ("--regularizer", "head.regularizer", {"choices": ("none", "l1", "l2", "l1_l2")}),
    ("--l1", "head.l1", {"type": float}),
    ("--l2", "head.l2", {"type": float}),
    ("--optimizer", "optimizer.name", {}),
    ("--learning-rate", "optimizer.learning_rate", {"type": float}),
    ("--momentum", "optimizer.momentum", {"type": float}),
    ("--weight-decay", "optimizer.weight_decay", {"type": float}),
    ("--clipnorm", "optimizer.clipnorm", {"type": _optional(float)}),
    ("--clipvalue", "optimizer.clipvalue", {"type": _optional(float)}),
    ("--schedule", "optimizer.schedule", {}),
    ("--epochs", "epochs", {"type": int}),
    ("--batch-size", "batch_size", {"type": int, "help": "per replica"}),
    ("--strategy", "strategy", {"choices": get_args(StrategyName), "help": "default: one device; mirrored: all local GPUs; multi_worker: cluster from TF_CONFIG"}),  # noqa: E501
    ("--scale-learning-rate", "scale_learning_rate", {"action": argparse.BooleanOptionalAction, "help": "learning rates x replicas (default: on)"}),  # noqa: E501
    ("--patience", "early_stopping_patience", {"type": _optional(int), "help": "early stopping; none = off"}),  # noqa: E501
    ("--early-stopping-monitor", "early_stopping_monitor", {"choices": ("val_loss", "val_accuracy")}),  # noqa: E501
    ("--cache-features", "cache_features", {"action": argparse.BooleanOptionalAction}),
    ("--fine-tune-blocks", "fine_tune_blocks", {"type": int}),
    ("--fine-tune-epochs", "fine_tune_epochs", {"type": int}),
    ("--fine-tune-learning-rate", "fine_tune_learning_rate", {"type": float}),
    ("--mc-samples", "mc_samples", {"type": int}),
    ("--calibration-fraction", "data.calibration_fraction", {"type": float, "help": "held out for the guarantees only (0: none)"}),  # noqa: E501
    ("--temperature-scaling", "temperature_scaling", {"choices": ("soften", "fit", "off"), "help": "serve a temperature fitted on validation: only if it softens (default), always, never"}),  # noqa: E501
    ("--conformal-method", "conformal_method", {"choices": ("lac", "aps")}),
    ("--default-alpha", "default_alpha", {"type": float, "help": "prediction sets' default miss rate"}),  # noqa: E501
    ("--target-risk", "target_risk", {"type": float, "help": "most errors among accepted answers"}),
    ("--risk-delta", "risk_delta", {"type": float, "help": "allowed chance the risk guarantee fails"}),  # noqa: E501
    ("--seed", "seed", {"type": int}),
    ("--model-name", "model_name", {}),
    ("--output-dir", "output_dir", {}),
    ("--export", "export", {"action": argparse.BooleanOptionalAction}),
)  # fmt: skip


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'head.activation': 'elu'} -> {'head': {'activation': 'elu'}}."""
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML or JSON file; flags override it")
    for flag, path, kwargs in TRAIN_FLAGS:
        parser.add_argument(flag, dest=path, default=argparse.SUPPRESS, **kwargs)


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config file's values with the given flags on top (not yet validated)."""
    from training.config import deep_merge, read_config_file

    paths = {p for _, p, _ in TRAIN_FLAGS}
    flat = {k: v for k, v in vars(args).items() if k in paths}
    values = read_config_file(args.config) if args.config is not None else {}
    return deep_merge(values, nest(flat))


def _add_train(subparsers: Any) -> None:
    parser = subparsers.add_parser("train", help="train and export a model")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(parser)


def _add_compare(subparsers: Any) -> None:
    from training.compare import EXPERIMENTS

    parser = subparsers.add_parser("compare", help="the chapter's experiments, several seeds each")
    parser.add_argument("--experiments", nargs="+", choices=list(EXPERIMENTS),
                        default=list(EXPERIMENTS))  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3, help="runs per variant (seeds 0..N-1)")
    quick_help = "tiny version for tests: 100 images, 32x32, 2 epochs, 2 variants"
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--output-report", type=Path, default=Path("reports/compare"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(parser)


def _add_pretrain(subparsers: Any) -> None:
    parser = subparsers.add_parser("pretrain", help="unsupervised pretraining of the conv base")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--image-size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    parser.add_argument("--base-weights", help="start from: imagenet | none | PATH")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--noise-stddev", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=Path("runs/pretrained_vgg16.weights.h5"))


def _add_predict(subparsers: Any) -> None:
    parser = subparsers.add_parser("predict", help="predict image files with uncertainty")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", default="uqserve_vgg16:latest", help="model store tag")
    parser.add_argument("--samples", type=int, help="MC dropout samples (default: the model's)")
    parser.add_argument("--seed", type=int, help="reproduce an answer (default: a fresh seed)")
    parser.add_argument("--json", action="store_true", help="the service's JSON answer")
    parser.add_argument("--alpha", type=float, help="prediction sets' miss rate (default: model's)")
    parser.add_argument("--base-dtype", choices=get_args(BaseDtype), default="float32",
                        help="what the base computes in, as UQSERVE_BASE_DTYPE")  # fmt: skip


def _add_evaluate(subparsers: Any) -> None:
    parser = subparsers.add_parser("evaluate", help="calibration, OOD detection, abstention")
    parser.add_argument("--model", default="uqserve_vgg16:latest", help="model store tag")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 10, 30, 100],
                        help="MC dropout T values to report")  # fmt: skip
    parser.add_argument("--ood-folder", type=Path, action="append", default=[],
                        help="extra OOD images (repeatable)")  # fmt: skip
    parser.add_argument("--ood-set", action="append", default=[], choices=("mnist",),
                        help="built-in OOD set (repeatable; mnist: uqserve[eval])")  # fmt: skip
    parser.add_argument("--shift", action="store_true",
                        help="the test split under rotation, noise, blur, contrast, translation; "
                        "deterministic, temperature-scaled and MC predictors compared")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="with --shift: two intensities per shift (a smoke test)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("reports"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The `uqserve` argument parser."""
    parser = argparse.ArgumentParser(prog="uqserve", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    _add_pretrain(subparsers)
    _add_predict(subparsers)
    _add_evaluate(subparsers)
    _add_compare(subparsers)
    return parser


def _train(args: argparse.Namespace) -> int:
    from training.config import TrainConfig
    from training.pipeline import run_training

    config = TrainConfig.model_validate(_config_values(args))
    result = run_training(config, verbose=0 if args.quiet else 1)
    print(f"run folder: {result.run_dir}")
    for name, value in sorted(result.card.metrics.items()):
        print(f"{name:>34}: {value:.4f}")
    if result.tag:
        print(f"exported: {result.tag}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from training.pretrain import PretrainConfig, pretrain

    values = {
        "dataset": args.dataset, "limit": args.limit,
        "preprocessing": {"image_size": tuple(args.image_size)},
        "epochs": args.epochs, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "noise_stddev": args.noise_stddev,
        "seed": args.seed, "output": args.output,
    }  # fmt: skip
    if args.base_weights is not None:
        values["base_weights"] = args.base_weights
    path = pretrain(PretrainConfig.model_validate(values))
    print(f"pretrained base weights: {path} (use with --base-weights {path})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from training.predict import format_table, predict_files

    response, card = predict_files(
        args.images, args.model, args.samples, args.seed, args.base_dtype, args.alpha
    )
    if args.json:
        print(response.model_dump_json(indent=2))
        return 0
    alpha = "" if response.alpha is None else f"  alpha: {response.alpha:g}"
    print(f"model: {response.model}  samples: {response.samples}  seed: {response.seed}{alpha}")
    print(format_table(response, args.images, card))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import Options, evaluate

    options = Options(
        grid=sorted(set(args.samples)), folders=args.ood_folder, named=args.ood_set,
        seed=args.seed, shift=args.shift, quick=args.quick,
    )  # fmt: skip
    folder, result = evaluate(args.model, args.output, options, args.quiet)
    for name, row in result.calibration.items():
        figures = "  ".join(f"{m} {row[m]:.4f}" for m in ("accuracy", "nll", "ece"))
        print(f"{name:>14}: {figures}")
    for name, table in result.ood.items():
        best = max(table, key=lambda score: table[score]["auroc"])
        print(f"OOD {name}: best AUROC {table[best]['auroc']:.4f} ({best})")
    if result.shift is not None:
        for name, row in result.shift.summary.items():
            figures = "  ".join(
                f"{m} {row[f'shifted_{m}']:.4f}" for m in ("accuracy", "nll", "ece")
            )
            print(f"shifted, {name:>30}: {figures}")
    print(f"report: {folder / 'report.md'}")
    return 0


QUICK = {
    "data": {"limit": 100},
    "preprocessing": {"image_size": (32, 32)},
    "base_weights": "none",
    "epochs": 2,
    "head": {"hidden_units": (16,), "dropout_rates": (0.5,)},
}


def _compare(args: argparse.Namespace) -> int:
    from training.compare import compare
    from training.config import TrainConfig, deep_merge

    values = _config_values(args)
    if args.quick:
        values = deep_merge(QUICK, values)
    TrainConfig.model_validate(values)  # report bad values before any work
    report = compare(values, args.output_report, list(range(args.seeds)), args.experiments,
                     quick=args.quick, quiet=args.quiet)  # fmt: skip
    print(f"report: {report}")
    return 0


def _describe(error: ValidationError) -> str:
    lines = [f"Invalid values ({error.error_count()} problem(s)):"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "config"
        lines.append(f"  {field}: {item['msg']} (received {item.get('input')!r})")
    return "\n".join(lines)


def _verbose(argv: Sequence[str] | None) -> bool:
    """Whether `--verbose` was given, read before `build_parser` (which imports TensorFlow)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_known_args(argv)[0].verbose


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `uqserve` console script."""
    try:
        select_backend()  # before anything imports Keras
    except (ValueError, RuntimeError) as error:
        print(f"uqserve: {error}", file=sys.stderr)
        return 2
    quiet_tensorflow(verbose=_verbose(argv))  # before anything imports TensorFlow
    args = build_parser().parse_args(argv)
    commands = {
        "train": _train,
        "pretrain": _pretrain,
        "predict": _predict,
        "evaluate": _evaluate,
        "compare": _compare,
    }
    try:
        if args.command in TENSORFLOW_COMMANDS:
            require_tensorflow(args.command)
        return commands[args.command](args)
    except ValidationError as error:
        print(_describe(error), file=sys.stderr)
        return 2
    except AlphaError as error:  # a flag value the model cannot answer: a usage error
        print(f"uqserve {args.command}: {error}", file=sys.stderr)
        return 2
    except yaml.YAMLError as error:
        print(f"uqserve {args.command}: config file is not valid YAML: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"uqserve {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
