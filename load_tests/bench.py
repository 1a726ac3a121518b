"""`make bench` (in-process part): what uncertainty costs over a plain prediction.

One model, one run: deterministic prediction vs the split MC-dropout predictor
vs the naive reference (T full forward passes, Keras' Dropout on, BN in
inference mode), for each T and batch size. Times are the best of
`--repeats` calls. The naive reference costs T full passes; it is timed over
`--naive-passes` of them and scaled to T (its cost is linear in T).

    python -m load_tests.bench --size 150 --samples 10 30 100 --batches 1 16 64
    python -m load_tests.bench --base-dtypes float32 bfloat16   # mixed-precision base too
    UQSERVE_KERAS_BACKEND=jax python -m load_tests.bench         # on Keras' JAX backend

Each base dtype after the first also reports how far its deterministic
probabilities are from the first's on the same images. The naive reference
is always the model as trained (float32): the chapter's loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from models.architecture import build_model
from models.config import BASE_DTYPES, ModelConfig, PreprocessingConfig
from models.mc_dropout import MCDropoutPredictor, naive_mc_samples


def best_time(call: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` calls, in seconds (after one warm-up call)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_batch(
    predictor: MCDropoutPredictor, x: np.ndarray, grid: list[int], repeats: int, naive_passes: int
) -> list[dict[str, float]]:
    """One batch size: a row per T."""
    deterministic = best_time(lambda: predictor.predict(x), repeats)
    rows = []
    for t in grid:
        mc = best_time(lambda t=t: predictor.sample(x, t, seed=0), repeats)
        passes = min(t, naive_passes)
        naive = best_time(lambda p=passes: naive_mc_samples(predictor.model, x, p), 1) * t / passes
        rows.append({
            "base_dtype": predictor.base_dtype, "batch": len(x), "samples": t,
            "deterministic_images_per_s": len(x) / deterministic,
            "mc_images_per_s": len(x) / mc,
            "naive_images_per_s": len(x) / naive,
            "mc_over_deterministic": mc / deterministic,
            "naive_over_mc": naive / mc,
        })  # fmt: skip
    return rows


def bench_dtype(
    predictor: MCDropoutPredictor, inputs: list[np.ndarray], args: argparse.Namespace
) -> list[dict[str, float]]:
    """Every batch size and T for one predictor; prints each batch's table as it goes."""
    rows = []
    for x in inputs:
        rows.extend(bench_batch(predictor, x, args.samples, args.repeats, args.naive_passes))
        print(format_rows(rows[-len(args.samples) :]), flush=True)
    return rows


def format_rows(rows: list[dict[str, float]]) -> str:
    """A Markdown table of the results."""
    lines = [
        "| base | batch | T | deterministic img/s | MC img/s | naive img/s "
        "| MC / det. time | naive / MC time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['base_dtype']} | {r['batch']} | {r['samples']} | "
            f"{r['deterministic_images_per_s']:.2f} | "
            f"{r['mc_images_per_s']:.2f} | {r['naive_images_per_s']:.3f} | "
            f"{r['mc_over_deterministic']:.3f} | {r['naive_over_mc']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=150, help="input height and width")
    parser.add_argument("--samples", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--base-dtypes", nargs="+", default=["float32"], choices=BASE_DTYPES,
                        help="what the base computes in; the first is the reference")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-passes", type=int, default=3)
    parser.add_argument("--base-weights", default=os.environ.get("UQSERVE_BASE_WEIGHTS", "none"))
    parser.add_argument("--output", type=Path, default=Path("reports") / "bench" / "bench.json")
    args = parser.parse_args(argv)
    args.output = args.output.resolve()  # once: relative to where the command runs
    config = ModelConfig(
        num_classes=10, preprocessing=PreprocessingConfig(image_size=(args.size, args.size))
    )
    model = build_model(config, args.base_weights)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(0.0, 60.0, (b, args.size, args.size, 3)).astype(np.float32)
              for b in args.batches]  # fmt: skip
    rows, deviations, reference = [], {}, None
    for dtype in args.base_dtypes:
        predictor = MCDropoutPredictor(model, max(args.batches), base_dtype=dtype)
        predictor.warm_up(config.input_shape, max(args.samples))  # as the service, any batch
        answer = predictor.predict(inputs[-1])  # (B, C)
        reference = answer if reference is None else reference
        deviations[dtype] = float(np.abs(answer - reference).max())
        rows.extend(bench_dtype(predictor, inputs, args))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}"
    backend = keras.backend.backend()
    result = {"size": args.size, "machine": machine, "keras_backend": backend, "rows": rows,
              "max_abs_diff_vs_first_dtype": deviations}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\n{args.size}x{args.size}, {machine}, Keras on {backend}\n\n{format_rows(rows)}")
    print(f"\nmax |probability difference| vs {args.base_dtypes[0]}: {deviations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
