"""Does a lower-precision base keep an exported model's answers? (`UQSERVE_BASE_DTYPE`)

The model's own test split (rebuilt from the config saved with it), answered
twice with the same dropout masks: base in float32, then in `--base-dtype`.
Reports the calibration figures of both, how far the probabilities move, how
often the predicted class changes, and how far the OOD scores move. Writes
reports/precision/<dtype>.json.

    python -m training.precision --model uqserve_vgg16:latest --base-dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from adapters.model_store import StoredModel
from models.config import BASE_DTYPES
from models.mc_dropout import MCDropoutPredictor
from models.uncertainty import summarize
from training.data import held_out_split
from training.outputs import SplitOutputs, predictor_outputs


def answers(
    stored: StoredModel, dtypes: list[str], samples: int, seed: int
) -> tuple[dict, np.ndarray]:
    """{dtype: (outputs, OOD scores)} on the test split, and its labels."""
    card, density, network = stored.card, stored.density(), stored.network()
    test = held_out_split(card)
    result = {}
    for dtype in dtypes:
        predictor = MCDropoutPredictor(network, base_dtype=dtype, temperature=card.temperature)
        outputs = predictor_outputs(predictor, test.images, card.model.preprocessing, samples, seed)
        scores = None if density is None else density.score(outputs.features)
        result[dtype] = (outputs, scores)
    return result, test.labels


def compare(exact: SplitOutputs, low: SplitOutputs) -> dict[str, float]:
    """How far the low-precision answers are from the exact ones."""
    mean_exact, mean_low = exact.samples.mean(axis=1), low.samples.mean(axis=1)  # (N, C)
    return {
        "max_abs_diff_deterministic": float(np.abs(exact.deterministic - low.deterministic).max()),
        "max_abs_diff_mc_mean": float(np.abs(mean_exact - mean_low).max()),
        "max_abs_diff_per_sample": float(np.abs(exact.samples - low.samples).max()),
        "top1_agreement_deterministic": float(
            (exact.deterministic.argmax(1) == low.deterministic.argmax(1)).mean()
        ),
        "top1_agreement_mc": float((mean_exact.argmax(1) == mean_low.argmax(1)).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="uqserve_vgg16:latest")
    parser.add_argument("--base-dtype", default="bfloat16", choices=BASE_DTYPES[1:])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("reports") / "precision")
    args = parser.parse_args(argv)
    args.output = args.output.resolve()  # once: relative to where the command runs
    stored = StoredModel.open(args.model)
    tag = stored.tag
    result, labels = answers(stored, ["float32", args.base_dtype], args.samples, args.seed)
    (exact, exact_scores), (low, low_scores) = result["float32"], result[args.base_dtype]
    summary = {"model": tag, "base_dtype": args.base_dtype, "samples": args.samples,
               "images": len(labels), "float32": summarize(exact.samples, labels),
               args.base_dtype: summarize(low.samples, labels), **compare(exact, low)}  # fmt: skip
    if exact_scores is not None:
        spread = float(np.ptp(exact_scores))
        summary["max_abs_diff_ood_score_over_range"] = float(
            np.abs(exact_scores - low_scores).max() / spread
        )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{args.base_dtype}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
