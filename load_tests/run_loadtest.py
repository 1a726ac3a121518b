"""`make loadtest`: serve the built bento, drive it with Locust, compare with in-process.

Builds the bento (unless --bento names one), serves it on a free port, waits
for /readyz, runs Locust headless, reads the adaptive batch sizes from
/metrics, stops the service, then measures in-process throughput of the same
model at the same T. Writes reports/loadtest/ (Locust CSV and HTML,
summary.json) and exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deploy.container import bento as bentos  # (importable when run as a script, too)
from load_tests import procs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
IMAGES_PER_REQUEST = {"/predict [1 image]": 1, "/predict [4 images]": 4, "/predict_array": 1}


def build_bento(model: str) -> str:
    """`bentoml build` of the CPU bento serving `model`; returns its tag."""
    return bentos.build_bento(model, ROOT / "bentofile.yaml")


def free_port() -> int:
    """A free port below the OS's ephemeral range (32768 and up on Linux).

    BentoML picks the ports of its inner services with bind(0), from that
    range; a port we took the same way could be handed to one of them before
    our server binds it, and the server would fail to start.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 31999")


def serve(
    bento: str, model: str, port: int, log: Path, base_dtype: str | None = None
) -> subprocess.Popen:
    """`bentoml serve <bento>` in its own process group (base dtype: the environment's)."""
    env = {**os.environ, "UQSERVE_MODEL": model}
    if base_dtype is not None:
        env["UQSERVE_BASE_DTYPE"] = base_dtype
    command = [str(BIN / "bentoml"), "serve", bento, "--port", str(port), "--host", "127.0.0.1"]
    with open(log, "w") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"the service exited during start-up; its log ends:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"the service was not ready within {timeout:.0f} s")


def run_locust(url: str, users: int, spawn_rate: float, duration: str, output: Path) -> int:
    """Locust headless against `url`; its exit code (non-zero when a request failed)."""
    command = [
        str(BIN / "locust"), "-f", str(HERE / "locustfile.py"), "--headless", "--host", url,
        "-u", str(users), "-r", str(spawn_rate), "-t", duration, "--only-summary",
        "--csv", str(output / "locust"), "--html", str(output / "report.html"),
    ]  # fmt: skip
    return subprocess.run(command, cwd=HERE, check=False).returncode


def weights_digest(url: str) -> dict:
    """The served weights' SHA-256 now and at load (POST /weights_digest)."""
    request = urllib.request.Request(
        f"{url}/weights_digest", data=b"{}", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def batch_histogram(url: str) -> dict[str, float]:
    """Images and requests per adaptive batch, from the service's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()

    def total(name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    images, batches = (
        total("uqserve_model_batch_images_sum"),
        total("uqserve_model_batch_images_count"),
    )
    requests = total("bentoml_service_adaptive_batch_size_sum")
    return {
        "batches": batches,
        "images": images,
        "mean_images_per_batch": images / max(batches, 1.0),
        "mean_requests_per_batch": requests / max(batches, 1.0),
    }


def served_throughput(output: Path, seconds: float) -> dict[str, float]:
    """Images/s and requests/s over the Locust run, from its stats CSV."""
    with open(output / "locust_stats.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] in IMAGES_PER_REQUEST]
    images = sum(int(row["Request Count"]) * IMAGES_PER_REQUEST[row["Name"]] for row in rows)
    requests = sum(int(row["Request Count"]) for row in rows)
    failures = sum(int(row["Failure Count"]) for row in rows)
    return {"images_per_s": images / seconds, "requests_per_s": requests / seconds,
            "requests": requests, "failures": failures}  # fmt: skip


def inprocess_throughput(
    model: str, samples: int, batch: int, seconds: float, base_dtype: str
) -> tuple[float, float]:
    """(images/s, cores used) of the same model in this process, MC at T.

    The whole answer's work, as a user calling `models/` directly would do
    it: decode the PNG files, preprocess (compiled, as the API service does),
    sample with one stream per image, score the density, and compute the
    uncertainty figures. Only HTTP, JSON and batching across requests are left
    out. Batches of `batch` of the Locust payloads.
    """
    from load_tests.payloads import make_payloads
    from models import uncertainty
    from models.mc_dropout import MCDropoutPredictor
    from models.preprocessing import Preprocessor
    from training.export import load_density, load_exported

    network, card = load_exported(model)
    predictor = MCDropoutPredictor(network, base_dtype=base_dtype)
    density = load_density(model)
    preprocess = Preprocessor(card.model.preprocessing)
    blobs = [p.read_bytes() for p in make_payloads()]
    blobs = (blobs * (batch // len(blobs) + 1))[:batch]
    predictor.warm_up(card.input_shape)
    preprocess.warm_up()
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        images = preprocess([np.asarray(Image.open(io.BytesIO(blob))) for blob in blobs])
        draws, embeddings = predictor.sample_each(images, [samples] * batch,
                                                  [(done, i) for i in range(batch)])  # fmt: skip
        if density is not None:
            density.log_density(embeddings)
        stacked = np.stack(draws)  # (B, T, C)
        for figure in (uncertainty.mean_probabilities, uncertainty.variance,
                       uncertainty.predictive_entropy, uncertainty.expected_entropy,
                       uncertainty.mutual_information):  # fmt: skip
            figure(stacked)
        done += batch
    wall = time.perf_counter() - start
    return done / wall, (time.process_time() - cpu) / wall


def cpu_cores(
    before: dict[str, float], after: dict[str, float], locust: float, seconds: float
) -> dict[str, float]:
    """Average cores each role used over the run: CPU seconds / wall seconds."""
    cores = {name: (after[name] - before.get(name, 0.0)) / seconds for name in after}
    cores["locust"] = locust / seconds
    cores["machine"] = float(os.cpu_count() or 1)
    return cores


def cores_of(summary: dict, role: str) -> float:
    """Cores the role used during the run (never 0, so a ratio over it is defined)."""
    return max(summary["cpu_cores"].get(role, 0.0), 1e-9)


def children_cpu() -> float:
    """CPU seconds used by this process's finished children (Locust)."""
    times = os.times()
    return times.children_user + times.children_system


def seconds_of(duration: str) -> float:
    """Locust's '60s', '2m', '1h30m' -> seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return float(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("UQSERVE_MODEL", "uqserve_vgg16:latest"))
    parser.add_argument("--bento", help="a built bento tag (default: build one)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--duration", default="60s", help="Locust run time, e.g. 60s, 2m")
    dtype = os.environ.get("UQSERVE_BASE_DTYPE", "float32")
    parser.add_argument("--base-dtype", default=dtype, help="float32, bfloat16 or float16")
    parser.add_argument("--inprocess-seconds", type=float, default=20.0, help="0: skip")
    parser.add_argument("--output", type=Path, default=ROOT / "reports" / "loadtest")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    bento = args.bento or build_bento(args.model)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = serve(bento, args.model, port, args.output / "service.log", args.base_dtype)
    try:
        wait_ready(url, process, args.output / "service.log")
        digest_before = weights_digest(url)
        before, locust, start = procs.cpu_seconds(process.pid), children_cpu(), time.monotonic()
        code = run_locust(url, args.users, args.spawn_rate, args.duration, args.output)
        cores = cpu_cores(before, procs.cpu_seconds(process.pid), children_cpu() - locust,
                          time.monotonic() - start)  # fmt: skip
        batches = batch_histogram(url)
        digest_after = weights_digest(url)
    finally:
        procs.stop_service(process)
    summary = {"bento": bento, "model": args.model, "users": args.users, "duration": args.duration,
               "base_dtype": args.base_dtype,
               "samples": 30, "served": served_throughput(args.output, seconds_of(args.duration)),
               "adaptive_batches": batches, "cpu_cores": cores,
               "weights": {"sha256_before": digest_before["sha256"],
                           "sha256_after": digest_after["sha256"],
                           "unchanged": digest_before["sha256"] == digest_after["sha256"]
                           == digest_after["loaded_sha256"]}}  # fmt: skip
    if args.inprocess_seconds > 0:
        inprocess, inprocess_cores = inprocess_throughput(
            args.model, 30, 16, args.inprocess_seconds, args.base_dtype
        )
        served = summary["served"]["images_per_s"]
        summary["inprocess_images_per_s"], summary["inprocess_cpu_cores"] = (
            inprocess,
            inprocess_cores,
        )
        summary["served_over_inprocess"] = served / inprocess
        # The same ratio per core of the model service vs per core in-process:
        # what serving costs when Locust and the API service are not counted.
        summary["served_over_inprocess_per_core"] = (served / cores_of(summary, "model")) / (
            inprocess / inprocess_cores
        )
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if not summary["weights"]["unchanged"]:
        print("load test: the served weights changed under load", file=sys.stderr)
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
