"""`make bench` (peer part): uqserve at T=100 against the plain service a user would write.

Serves uqserve (`service.service:ApiService`, or a built bento) and the peer
(`load_tests/peer_service.py`, the same `.keras` file, deterministic), both
from the start, then loads one at a time with the same Locust load (one PNG
digit per request, `--users` clients, no think time): a warm-up run each,
then `--rounds` rounds of uqserve, peer. Reports images/s, Locust's latency
percentiles, images per adaptive batch and the CPU each role used, per run,
and uqserve/peer throughput. Then, with both stopped, each side's whole
answer for a batch in this process (`--inprocess-batch` images, no HTTP).
Writes `summary.json` and each run's Locust CSV under `--output`; exits
non-zero if any request failed or uqserve's weights changed.

    python -m load_tests.peer_bench --model uqserve_vgg16:latest --users 8 --duration 20s
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy import processes
from load_tests.peer_users import PEER_SAMPLES
from load_tests.run_loadtest import (
    ROOT,
    children_cpu,
    cpu_cores,
    run_locust,
    seconds_of,
    serve_env,
    weights_digest,
)
from models.config import BASE_DTYPES

UQSERVE, PEER = "uqserve", "peer"


@dataclass(frozen=True)
class Target:
    """A served service, the Locust user class that loads it, its batch-size histogram."""

    name: str
    url: str
    pid: int
    user_class: str
    batch_metric: str  # images per adaptive batch, in /metrics


def batch_totals(target: Target) -> tuple[float, float]:
    """(images, batches) the target has batched so far, from its /metrics."""
    with urllib.request.urlopen(f"{target.url}/metrics", timeout=10) as response:
        text = response.read().decode()

    def total(suffix: str) -> float:
        name = f"{target.batch_metric}_{suffix}"
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    return total("sum"), total("count")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--output` is resolved once, so no child's cwd can move it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("UQSERVE_MODEL", "uqserve_vgg16:latest"))
    parser.add_argument("--bento", help="serve this built bento as uqserve (default: the source)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", default="20s", help="each measured run, e.g. 20s, 1m")
    parser.add_argument("--warmup", default="5s", help="an unmeasured run of each first")
    parser.add_argument("--rounds", type=int, default=2)
    dtype = os.environ.get("UQSERVE_BASE_DTYPE", "float32")
    parser.add_argument("--base-dtype", default=dtype, choices=BASE_DTYPES, help="uqserve's")
    parser.add_argument(
        "--inprocess-batch",
        type=int,
        default=4,
        help="images per in-process batch after the served runs (0: skip)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="in-process: best of this many")
    parser.add_argument("--output", type=Path, default=Path("reports") / "bench" / "peer")
    args = parser.parse_args(argv)
    args.output = args.output.resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    return args


def locust_row(output: Path) -> dict[str, float]:
    """Requests, failures and latency percentiles (ms) of a run, from Locust's stats CSV."""
    with open(output / "locust_stats.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")

    def ms(column: str) -> float:  # Locust writes N/A when a run had no request
        return float("nan") if row[column] == "N/A" else float(row[column])

    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "p50_ms": ms("50%"), "p95_ms": ms("95%"), "p99_ms": ms("99%")}  # fmt: skip


def measure(target: Target, args: argparse.Namespace, duration: str, name: str) -> dict:
    """One Locust run against `target` -> images/s, latency, failures, cores per role."""
    output = args.output / name
    output.mkdir(parents=True, exist_ok=True)
    before, locust = processes.cpu_seconds(target.pid), children_cpu()
    images, batches = batch_totals(target)
    start = time.monotonic()
    code = run_locust(target.url, args.users, args.users, duration, output, "peer_users.py",
                      target.user_class)  # fmt: skip
    wall = time.monotonic() - start
    cores = cpu_cores(before, processes.cpu_seconds(target.pid), children_cpu() - locust, wall)
    row = locust_row(output)
    seconds = seconds_of(duration)
    images_after, batches_after = batch_totals(target)
    per_batch = (images_after - images) / max(batches_after - batches, 1.0)
    return {"target": target.name, "run": name, "exit_code": code, **row,
            "images_per_s": row["requests"] / seconds, "images_per_batch": per_batch,
            "cpu_cores": cores}  # fmt: skip


def start(
    target: str, name: str, args: argparse.Namespace
) -> tuple[Target, tuple[subprocess.Popen, Path]]:
    """Serve `target` from the project root on a free port -> (Target, its process)."""
    port = processes.free_port()
    log = args.output / f"{name}.log"
    process = processes.serve(target, port, log, serve_env(args.model, args.base_dtype), ROOT)
    user, metric = (
        ("UqserveUser", "uqserve_batch_images")
        if name == UQSERVE
        else ("PeerUser", "bentoml_service_adaptive_batch_size")
    )
    return Target(name, f"http://127.0.0.1:{port}", process.pid, user, metric), (process, log)


def compare(runs: list[dict]) -> dict:
    """Mean images/s of each target over the measured rounds, and uqserve/peer."""
    mean = {
        name: statistics.fmean(r["images_per_s"] for r in runs if r["target"] == name)
        for name in (UQSERVE, PEER)
    }
    return {"uqserve_images_per_s": mean[UQSERVE], "peer_images_per_s": mean[PEER],
            "uqserve_over_peer": mean[UQSERVE] / mean[PEER]}  # fmt: skip


def format_runs(runs: list[dict]) -> str:
    """A Markdown table, one row per measured run."""
    lines = [
        "| run | images/s | failed | p50 / p95 / p99 ms | images per batch "
        "| CPU service / locust |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        c = r["cpu_cores"]
        lines.append(
            f"| {r['run']} | {r['images_per_s']:.1f} | {r['failures']} | "
            f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f} | "
            f"{r['images_per_batch']:.1f} | {c.get('service', 0.0):.2f} / {c['locust']:.2f} |"
        )
    return "\n".join(lines)


def bench(targets: list[Target], args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Warm each target up, then the rounds -> (measured runs, weights digests)."""
    uqserve = targets[0]
    digest_before = weights_digest(uqserve.url)
    for target in targets:
        measure(target, args, args.warmup, f"warmup-{target.name}")
    runs = [
        measure(target, args, args.duration, f"{round_}-{target.name}")
        for round_ in range(1, args.rounds + 1)
        for target in targets
    ]
    digest_after = weights_digest(uqserve.url)
    unchanged = digest_before["sha256"] == digest_after["sha256"] == digest_after["loaded_sha256"]
    return runs, {"sha256_before": digest_before["sha256"], "unchanged": unchanged}


def inprocess(model: str, base_dtype: str, batch: int, repeats: int) -> dict[str, float]:
    """Milliseconds per batch of `batch` payload PNGs in this process, no HTTP, best of
    `repeats` after a warm-up call: each side's whole answer, then its parts.

    uqserve: decode, compiled preprocessing, T=PEER_SAMPLES samples and the OOD
    score (`sample_and_score`), the answers. The peer: PIL, `classify`.
    """
    from load_tests.bench import best_time

    calls = inprocess_calls(model, base_dtype, batch)
    times = {name: 1e3 * best_time(call, repeats) for name, call in calls.items()}
    return {"batch": batch, **times,
            "uqserve_over_peer_time": times["uqserve_ms"] / times["peer_ms"]}  # fmt: skip


def inprocess_calls(model: str, base_dtype: str, batch: int) -> dict[str, Callable[[], object]]:
    """The calls `inprocess` times, by name, on the model and payloads, warmed up."""
    import io

    import keras
    from PIL import Image

    from adapters.images import decode_image
    from adapters.model_store import StoredModel
    from load_tests.payloads import make_payloads
    from load_tests.peer_service import classify
    from models.answer import build_answers, density_scores, sample_and_score
    from models.density import limit_blas_threads
    from models.preprocessing import Preprocessor

    limit_blas_threads()  # as the service does
    stored = StoredModel.open(model)
    predictor, density = stored.predictor(base_dtype), stored.density()
    preprocess = Preprocessor(stored.card.model.preprocessing)
    network = keras.saving.load_model(stored.model_file)
    blobs = [path.read_bytes() for path in make_payloads()]
    blobs = (blobs * (batch // len(blobs) + 1))[:batch]
    predictor.warm_up(stored.card.input_shape, PEER_SAMPLES)
    preprocess.warm_up()
    images = preprocess([decode_image(blob, "payload") for blob in blobs])
    streams, samples = [(0, i) for i in range(batch)], [PEER_SAMPLES] * batch
    draws, embeddings, hidden = predictor.sample_each(images, samples, streams)
    scores = density_scores(density, embeddings, hidden)

    def uqserve() -> None:
        x = preprocess([decode_image(blob, "payload") for blob in blobs])
        drawn, ood = sample_and_score(predictor, density, x, samples, streams)
        build_answers(np.stack(drawn), ood, stored.card)  # (B, T, C)

    size = tuple(reversed(network.input_shape[1:3]))
    return {
        "uqserve_ms": uqserve,
        "peer_ms": lambda: classify(network, size, [Image.open(io.BytesIO(b)) for b in blobs]),
        "uqserve_decode_preprocess_ms": lambda: preprocess([decode_image(b, "-") for b in blobs]),
        "uqserve_sample_ms": lambda: predictor.sample_each(images, samples, streams),
        "uqserve_ood_score_ms": lambda: density_scores(density, embeddings, hidden),
        "uqserve_answers_ms": lambda: build_answers(np.stack(draws), scores, stored.card),
        "peer_predict_on_batch_ms": lambda: network.predict_on_batch(images),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = [
        start(args.bento or "service.service:ApiService", UQSERVE, args),
        start("load_tests.peer_service:PeerService", PEER, args),
    ]
    try:
        for target, (process, log) in started:
            processes.wait_served(target.url, process, log)
        runs, weights = bench([target for target, _ in started], args)
    finally:
        for _, (process, _log) in started:
            processes.stop_service(process)
    summary = {"model": args.model, "users": args.users, "duration": args.duration,
               "samples": PEER_SAMPLES, "base_dtype": args.base_dtype, "runs": runs,
               **compare(runs), "weights": weights}  # fmt: skip
    if args.inprocess_batch > 0:  # after the services stopped: nothing else runs
        summary["inprocess"] = inprocess(
            args.model, args.base_dtype, args.inprocess_batch, args.repeats
        )
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{format_runs(runs)}\n\nuqserve (T={PEER_SAMPLES}) / peer (deterministic): "
          f"{summary['uqserve_over_peer']:.2f} images/s")  # fmt: skip
    if "inprocess" in summary:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in summary["inprocess"].items())
        print(f"in-process: {parts}")
    failed = any(r["failures"] or r["exit_code"] for r in runs)
    if not weights["unchanged"]:
        print("peer bench: uqserve's weights changed under load", file=sys.stderr)
    return 1 if failed or not weights["unchanged"] else 0


if __name__ == "__main__":
    sys.exit(main())
