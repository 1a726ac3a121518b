"""`make loadtest`: serve the built bento, drive it with Locust, compare with in-process.

Builds the bento (unless --bento names one), serves it on a free port, waits
for /readyz, runs Locust headless, reads the adaptive batch sizes from
/metrics, stops the service, then measures in-process throughput of the same
model at the same T. Writes reports/loadtest/ (Locust CSV and HTML,
summary.json) and exits non-zero if any request failed.

    python -m load_tests.run_loadtest --model uqserve_vgg16:latest --duration 60s
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from adapters.images import decode_image
from adapters.model_store import StoredModel
from deploy import processes
from deploy.container.bento import build_bento
from load_tests.payloads import SAMPLES
from models.config import BASE_DTYPES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
IMAGES_PER_REQUEST = {
    "/predict [1 image]": 1,
    "/predict [4 images]": 4,
    "/predict_array": 1,
    "/v2/models/[model]/infer": 1,
}


def run_locust(
    url: str,
    users: int,
    spawn_rate: float,
    duration: str,
    output: Path,
    locustfile: str = "locustfile.py",
    user_class: str = "ServiceUser",
    env: dict[str, str] | None = None,
) -> int:
    """Locust headless against `url`; its exit code (non-zero when a request failed).

    `locustfile` is a file in `load_tests/`; `user_class` names its users (one class, or
    several separated by spaces); `env` is added to Locust's environment (keys, flood).
    """
    output = output.resolve()  # Locust runs in ROOT; a relative path would move
    command = [
        str(BIN / "locust"), "-f", str(HERE / locustfile), "--headless", "--host", url,
        "-u", str(users), "-r", str(spawn_rate), "-t", duration, "--only-summary",
        "--csv", str(output / "locust"), "--html", str(output / "report.html"),
        *user_class.split(),
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})},
                          check=False).returncode  # fmt: skip


def weights_digest(url: str, key: str | None = None) -> dict:
    """The served weights' SHA-256 now and at load (POST /weights_digest, with an admin `key`
    when the service has keys)."""
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{url}/weights_digest", data=b"{}", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def batch_histogram(url: str, key: str | None = None) -> dict[str, float]:
    """Images and requests per adaptive batch, from the service's /metrics (with `key`)."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    request = urllib.request.Request(f"{url}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()

    def total(name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    images, batches = total("uqserve_batch_images_sum"), total("uqserve_batch_images_count")
    requests = total("uqserve_batch_requests_sum")
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
            "requests": requests, "failures": failures,
            "per_task": {row["Name"]: _task_figures(row, seconds) for row in rows}}  # fmt: skip


def _task_figures(row: dict[str, str], seconds: float) -> dict[str, float]:
    """One Locust task's requests, requests/s, failures and latencies (ms) from its stats row."""
    return {
        "requests": int(row["Request Count"]),
        "requests_per_s": int(row["Request Count"]) / seconds,
        "failures": int(row["Failure Count"]),
        "mean_ms": float(row["Average Response Time"]),
        "p50_ms": float(row["50%"]),
        "p99_ms": float(row["99%"]),
    }


def inprocess_throughput(
    model: str, samples: int, batch: int, seconds: float, base_dtype: str
) -> tuple[float, float]:
    """(images/s, cores used) of the same model in this process, MC at T.

    The whole answer's work, with the functions the service runs: decode the
    PNG files, preprocess (compiled), sample with one stream per image, score
    the density, and build the answers. Only HTTP, JSON and batching across
    requests are left out. Batches of `batch` of the Locust payloads.
    """
    from load_tests.payloads import make_payloads
    from models.answer import build_answers, sample_and_score
    from models.density import limit_blas_threads
    from models.preprocessing import Preprocessor

    limit_blas_threads()  # as the service does
    stored = StoredModel.open(model)
    predictor, density = stored.predictor(base_dtype), stored.density()
    preprocess = Preprocessor(stored.card.model.preprocessing)
    blobs = [p.read_bytes() for p in make_payloads()]
    blobs = (blobs * (batch // len(blobs) + 1))[:batch]
    predictor.warm_up(stored.card.input_shape, samples)
    preprocess.warm_up()
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        images = preprocess([decode_image(blob, "payload") for blob in blobs])
        streams = [(done, i) for i in range(batch)]
        draws, scores = sample_and_score(predictor, density, images, [samples] * batch, streams)
        build_answers(np.stack(draws), scores, stored.card)  # draws: (B, T, C)
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


def serve_env(model: str, base_dtype: str | None = None,
              digest_interval_s: float | None = 0.0) -> dict[str, str]:  # fmt: skip
    """The `UQSERVE_*` settings a load-test server runs with (base dtype: the environment's).

    The weights digest is fresh on every call by default (interval 0), as the
    runs compare the digests before and after; None keeps the service's default.
    """
    env = {"UQSERVE_MODEL": model}
    if digest_interval_s is not None:
        env["UQSERVE_DIGEST_INTERVAL_S"] = str(digest_interval_s)
    if base_dtype is not None:
        env["UQSERVE_BASE_DTYPE"] = base_dtype
    return env


class RunKeys:
    """Fresh keys for one run (`--auth`): the service requires them, Locust sends them."""

    def __init__(self) -> None:
        self.key, self.admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)

    def service_env(self) -> dict[str, str]:
        """The service's key variables."""
        return {"UQSERVE_API_KEYS": self.key, "UQSERVE_ADMIN_KEYS": self.admin}

    def locust_env(self) -> dict[str, str]:
        """The variables Locust's users read their keys from."""
        return {"UQSERVE_API_KEY": self.key, "UQSERVE_ADMIN_KEY": self.admin}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--output` is resolved once, so no child's cwd can move it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("UQSERVE_MODEL", "uqserve_vgg16:latest"))
    parser.add_argument("--bento", help="a built bento tag (default: build one)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--duration", default="60s", help="Locust run time, e.g. 60s, 2m")
    dtype = os.environ.get("UQSERVE_BASE_DTYPE", "float32")
    parser.add_argument("--base-dtype", default=dtype, choices=BASE_DTYPES)
    parser.add_argument("--inprocess-seconds", type=float, default=20.0, help="0: skip")
    parser.add_argument("--auth", action="store_true",
                        help="serve with fresh API keys; Locust sends them")  # fmt: skip
    parser.add_argument("--digest-flood", type=int, default=0, metavar="USERS",
                        help="add USERS admins each calling /weights_digest 10 times a second; "
                        "the service keeps its default digest interval")  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("reports") / "loadtest")
    args = parser.parse_args(argv)
    args.output = args.output.resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    return args


def served_run(bento: str, args: argparse.Namespace) -> tuple[int, dict]:
    """Serve `bento`, run Locust against it, stop it -> (Locust's exit code, summary)."""
    port, log = processes.free_port(), args.output / "service.log"
    url, keys = f"http://127.0.0.1:{port}", RunKeys() if args.auth else None
    interval = None if args.digest_flood else 0.0  # None: the service's own default
    env = {
        **serve_env(args.model, args.base_dtype, interval),
        **(keys.service_env() if keys else {}),
    }
    locust_env = {**(keys.locust_env() if keys else {}),
                  "UQSERVE_DIGEST_FLOOD_USERS": str(args.digest_flood)}  # fmt: skip
    users = "ServiceUser DigestFlood" if args.digest_flood else "ServiceUser"
    admin = keys.admin if keys else None
    process = processes.serve(bento, port, log, env)
    try:
        processes.wait_served(url, process, log)
        digest_before = weights_digest(url, admin)
        before, locust = processes.cpu_seconds(process.pid), children_cpu()
        start = time.monotonic()
        code = run_locust(url, args.users + args.digest_flood, args.spawn_rate, args.duration,
                          args.output, user_class=users, env=locust_env)  # fmt: skip
        cores = cpu_cores(before, processes.cpu_seconds(process.pid), children_cpu() - locust,
                          time.monotonic() - start)  # fmt: skip
        batches = batch_histogram(url, admin)
        digest_after = weights_digest(url, admin)
    finally:
        processes.stop_service(process)
    summary = {"bento": bento, "model": args.model, "users": args.users, "duration": args.duration,
               "base_dtype": args.base_dtype, "samples": SAMPLES, "auth": args.auth,
               "digest_flood_users": args.digest_flood,
               "served": served_throughput(args.output, seconds_of(args.duration)),
               "adaptive_batches": batches, "cpu_cores": cores,
               "weights": {"sha256_before": digest_before["sha256"],
                           "sha256_after": digest_after["sha256"],
                           "unchanged": digest_before["sha256"] == digest_after["sha256"]
                           == digest_after["loaded_sha256"]}}  # fmt: skip
    return code, summary


def add_inprocess(summary: dict, args: argparse.Namespace) -> None:
    """The in-process reference at the same T, and served/in-process (also per core)."""
    inprocess, inprocess_cores = inprocess_throughput(
        args.model, SAMPLES, 16, args.inprocess_seconds, args.base_dtype
    )
    served = summary["served"]["images_per_s"]
    summary["inprocess_images_per_s"] = inprocess
    summary["inprocess_cpu_cores"] = inprocess_cores
    summary["served_over_inprocess"] = served / inprocess
    # The same ratio per core of the service vs per core in-process:
    # what serving costs when Locust is not counted.
    summary["served_over_inprocess_per_core"] = (served / cores_of(summary, "service")) / (
        inprocess / inprocess_cores
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    code, summary = served_run(args.bento or build_bento(args.model, ROOT / "bentofile.yaml"), args)
    if args.inprocess_seconds > 0:
        add_inprocess(summary, args)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if not summary["weights"]["unchanged"]:
        print("load test: the served weights changed under load", file=sys.stderr)
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
