"""`python -m load_tests.device_bench`: what MC dropout costs on Keras' JAX backend, on a GPU.

Run by `load_tests/device_check.sh` on the GPU machine, and with `--cpu --quick`
by the test suite here (every code path, small). Two parts; OUTPUT/device_bench.json
is rewritten as each figure comes in, so a run cut short keeps what it measured:

    in-process   a model with random weights (timings do not depend on them), for
                 each image size, base dtype and batch: deterministic images/s
                 (`MCDropoutPredictor.predict`: the compiled prefix of the
                 batch's bucket, then the suffix with dropout off), MC images/s
                 at each T (`sample`) and MC/deterministic time. Each program's
                 first call (its compile) is timed apart; each figure is the
                 median of calls repeated for `min_seconds`. Configs left when
                 the part's deadline passes are listed as skipped, not run.
    served       the model at the served size (224x224 on the GPU), with a feature
                 density and calibrated guarantees as `uqserve train` exports
                 it, in a temporary BentoML store, served
                 from source on JAX (`bentoml serve service.service:ApiService`) and
                 loaded by concurrent asyncio clients posting PNG files to /predict
                 at T: images/s, latency p50/p99, images per adaptive batch (from
                 /metrics), failures (any non-200 or malformed answer).

The targets (MC(T=100)/deterministic time <= 1.05 at batch 64; >= 5,000 images/s
served at 224x224, T=100, bfloat16) are written next to the figures, not asserted.
Exits 1 when a part failed or a served request did; 0 otherwise, targets met or not.

    python -m load_tests.device_bench --output reports/device            # GPU
    python -m load_tests.device_bench --output /tmp/dry --cpu --quick    # CPU dry run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import io
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
from PIL import Image

from adapters.backend import select_backend
from deploy import processes

if TYPE_CHECKING:  # Keras is imported once `configure` has chosen its backend
    import keras

ROOT = Path(__file__).resolve().parents[1]
LOG = logging.getLogger("device_bench")
TARGETS = {
    "mc_over_deterministic_max": 1.05,
    "mc_over_deterministic_at": {"batch": 64, "samples": 100},
    "served_images_per_s_min": 5000.0,
    "served_at": {"size": 224, "samples": 100, "base_dtype": "bfloat16"},
}


@dataclass(frozen=True)
class Plan:
    """What one run measures, and the time it may take."""

    sizes: tuple[int, ...]  # in-process image sizes, the first measured first
    dtypes: tuple[str, ...]  # base dtypes
    batches: tuple[int, ...]
    samples: tuple[int, ...]  # T
    min_seconds: float  # each timing repeats calls for at least this long
    inprocess_budget_s: float  # the in-process part stops starting configs after this
    total_budget_s: float  # the served part shrinks its waits to end within this
    served_size: int
    served_dtype: str
    served_samples: int
    max_batch_size: int  # UQSERVE_MAX_BATCH_SIZE
    clients: int  # concurrent requests
    images_per_request: int
    warmup_s: float  # unmeasured load first
    duration_s: float  # measured load
    ready_timeout_s: float  # start-up (compiles every bucket) until /readyz
    num_classes: int = 10


GPU = Plan(
    sizes=(224, 150), dtypes=("bfloat16", "float32"), batches=(64, 16, 256),
    samples=(30, 100), min_seconds=1.0, inprocess_budget_s=180.0, total_budget_s=420.0,
    served_size=224, served_dtype="bfloat16", served_samples=100, max_batch_size=256,
    clients=32, images_per_request=16, warmup_s=10.0, duration_s=30.0, ready_timeout_s=180.0,
)  # fmt: skip
QUICK = Plan(
    sizes=(32,), dtypes=("float32",), batches=(4,), samples=(2, 5), min_seconds=0.2,
    inprocess_budget_s=60.0, total_budget_s=400.0, served_size=32, served_dtype="bfloat16",
    served_samples=5, max_batch_size=8, clients=3, images_per_request=2, warmup_s=2.0,
    duration_s=4.0, ready_timeout_s=180.0,
)  # fmt: skip


@dataclass
class Report:
    """The run's figures, written whole to `path` after every change."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def set(self, key: str, value: object) -> None:
        """Record `value` under `key` and write the file."""
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def configure(cpu: bool, store: Path) -> None:
    """Before JAX, Keras or BentoML is imported: JAX backend (on the CPU with `cpu`), a
    private model store, no telemetry. The served process inherits all of it."""
    os.environ["UQSERVE_KERAS_BACKEND"] = "jax"
    if cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ.pop("UQSERVE_GPU", None)
    os.environ["BENTOML_HOME"] = str(store)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    select_backend()  # KERAS_BACKEND=jax; JAX allocates GPU memory as needed, to share it


def setup_logging(path: Path) -> None:
    """The log to `path` and to stderr, with times."""
    LOG.setLevel(logging.INFO)
    for handler in (logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        LOG.addHandler(handler)


def device_info() -> dict[str, Any]:
    """The accelerator JAX runs on, the host, and the versions that matter."""
    import jax

    devices = jax.devices()
    versions = {}
    for name in ("jax", "jaxlib", "keras", "bentoml", "numpy", "pydantic"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {
        "platform": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": [str(device) for device in devices],
        "host": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.node()}",
        "python": platform.python_version(),
        "versions": versions,
    }


def median_seconds(call: Callable[[], object], min_seconds: float) -> tuple[float, int]:
    """(median seconds, calls): `call` repeated at least 3 times and `min_seconds` long.

    Each call returns NumPy arrays, so it has waited for the device.
    """
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < 10_000):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return statistics.median(times), len(times)


def first_call(call: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """(`call`'s answer, its seconds): a program's first call, which compiles it."""
    begin = time.perf_counter()
    answer = call()
    return answer, time.perf_counter() - begin


def probability_error(probs: np.ndarray) -> float:
    """How far (..., C) probabilities are from sane: the largest |sum - 1| or distance out
    of [0, 1]; infinite when any is NaN or infinite."""
    probs = np.asarray(probs, np.float64)
    if not np.isfinite(probs).all():
        return float("inf")
    outside = max(float(-probs.min()), float(probs.max() - 1.0), 0.0)
    return max(float(np.abs(probs.sum(axis=-1) - 1.0).max()), outside)


# In-process ------------------------------------------------------------------


def build(size: int, num_classes: int) -> keras.Model:
    """The default network at `size` x `size`, random weights (the timings' model)."""
    from models.architecture import build_model
    from models.config import ModelConfig, PreprocessingConfig

    config = ModelConfig(
        num_classes=num_classes, preprocessing=PreprocessingConfig(image_size=(size, size))
    )
    return build_model(config, base_weights="none")


def bench_config(model: keras.Model, dtype: str, batch: int, plan: Plan) -> list[dict]:
    """One size, base dtype and batch: a row per T, each with the deterministic figure."""
    from models.mc_dropout import MCDropoutPredictor

    size = int(model.input_shape[1])
    predictor = MCDropoutPredictor(model, batch_size=batch, base_dtype=dtype)
    images = np.random.default_rng(0).normal(0.0, 60.0, (batch, size, size, 3)).astype("float32")
    answer, det_compile = first_call(lambda: predictor.predict(images))
    det_s, det_calls = median_seconds(lambda: predictor.predict(images), plan.min_seconds)
    rows = []
    for t in plan.samples:
        draws, mc_compile = first_call(lambda t=t: predictor.sample(images, t, seed=0))
        mc_s, mc_calls = median_seconds(
            lambda t=t: predictor.sample(images, t, seed=0), plan.min_seconds
        )
        rows.append({
            "size": size, "base_dtype": dtype, "batch": batch, "samples": t,
            "deterministic_images_per_s": batch / det_s, "mc_images_per_s": batch / mc_s,
            "mc_over_deterministic": mc_s / det_s,
            "deterministic_ms": 1e3 * det_s, "mc_ms": 1e3 * mc_s,
            "calls": {"deterministic": det_calls, "mc": mc_calls},
            "first_call_s": {"deterministic": det_compile, "mc": mc_compile},
            "probability_error": max(probability_error(answer), probability_error(draws)),
            "shape": {"deterministic": list(answer.shape), "mc": list(draws.shape)},
        })  # fmt: skip
    return rows


def configs(plan: Plan) -> list[tuple[int, int, str]]:
    """(size, batch, dtype) in the order measured: the first size and batch first, so a
    run cut short has the figures the targets need."""
    return [(s, b, d) for s in plan.sizes for b in plan.batches for d in plan.dtypes]


def inprocess(plan: Plan, report: Report, deadline: float, models: dict[int, Any]) -> bool:
    """Every config until `deadline` (monotonic); True when none failed. `models` caches
    one network per size (the served part reuses its size's)."""
    part: dict[str, list] = {"rows": [], "skipped": [], "errors": []}
    for size, batch, dtype in configs(plan):
        where = {"size": size, "batch": batch, "base_dtype": dtype}
        if time.monotonic() > deadline:
            part["skipped"].append({**where, "reason": "in-process deadline passed"})
            report.set("inprocess", part)
            continue
        try:
            if size not in models:
                models[size] = build(size, plan.num_classes)
            rows = bench_config(models[size], dtype, batch, plan)
        except Exception as error:  # out of memory, or a bug: recorded, the others still run
            LOG.exception("in-process %s failed", where)
            part["errors"].append({**where, "error": f"{type(error).__name__}: {error}"})
        else:
            part["rows"] += rows
            for row in rows:
                LOG.info("%s", format_row(row))
        report.set("inprocess", part)
    return not part["errors"]


def format_row(row: dict) -> str:
    """One in-process row on a line."""
    return (
        f"{row['size']}px {row['base_dtype']} batch {row['batch']} T={row['samples']}: "
        f"det {row['deterministic_images_per_s']:.1f} img/s, MC {row['mc_images_per_s']:.1f} "
        f"img/s, MC/det {row['mc_over_deterministic']:.3f} "
        f"(first calls {row['first_call_s']['deterministic']:.1f}"
        f"/{row['first_call_s']['mc']:.1f} s)"
    )


def mc_target(rows: list[dict]) -> list[dict]:
    """MC/deterministic time at the target's batch and T, per size and dtype, judged."""
    at = TARGETS["mc_over_deterministic_at"]
    limit = TARGETS["mc_over_deterministic_max"]
    return [
        {"size": r["size"], "base_dtype": r["base_dtype"], "batch": r["batch"],
         "samples": r["samples"], "mc_over_deterministic": r["mc_over_deterministic"],
         "met": r["mc_over_deterministic"] <= limit}
        for r in rows
        if r["batch"] == at["batch"] and r["samples"] == at["samples"]
    ]  # fmt: skip


# Served ----------------------------------------------------------------------


def calibration(model: keras.Model, plan: Plan) -> tuple[Any, Any, float]:
    """(feature density, guarantees, OOD threshold) fitted on random images, as training
    fits them on its splits: labels are the model's own answers, 10 % changed, so the
    sets and the acceptance rule have something to calibrate."""
    from models.config import PreprocessingConfig
    from models.density import OODScore
    from models.guarantees import Guarantees, calibrate
    from models.mc_dropout import MCDropoutPredictor
    from models.preprocessing import preprocess_images

    size, count = plan.served_size, 6 * plan.num_classes  # 6 images per class for the density
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (count, size, size, 3)).astype("float32")
    images = preprocess_images(raw, PreprocessingConfig(image_size=(size, size)))
    predictor = MCDropoutPredictor(model, batch_size=count)
    embeddings, hidden = predictor.forward(images)
    features = {"base": embeddings, "hidden": hidden}
    density = OODScore.fit(features, np.arange(count) % plan.num_classes, features)
    draws = predictor.sample(images, plan.served_samples, seed=1)  # (n, T, C)
    labels = draws.mean(axis=1).argmax(axis=1)
    labels[: count // 10] = (labels[: count // 10] + 1) % plan.num_classes
    guarantees = Guarantees(
        default_alpha=0.2,
        mc=calibrate(draws, labels, "lac", 0.3, 0.05, rng),
        single=calibrate(draws[:, :1], labels, "lac", 0.3, 0.05, rng),
    )
    return density, guarantees, float(np.quantile(density.score(features), 0.95))


def export(model: keras.Model, plan: Plan) -> str:
    """The served model, its card, density and guarantees into the model store -> its tag."""
    from adapters.model_store import export_model
    from models.card import ModelCard
    from models.config import ModelConfig, PreprocessingConfig

    began = time.monotonic()
    density, guarantees, threshold = calibration(model, plan)
    LOG.info("density and guarantees fitted in %.1f s", time.monotonic() - began)
    size = plan.served_size
    card = ModelCard(
        class_names=tuple(f"class_{i}" for i in range(plan.num_classes)),
        model=ModelConfig(
            num_classes=plan.num_classes,
            preprocessing=PreprocessingConfig(image_size=(size, size)),
        ),
        mc_samples=plan.served_samples,  # the service's warm-up compiles for this T
        guarantees=guarantees,
        ood_threshold=threshold,
        metrics={},
    )
    return export_model(model, card, "uqserve_device_bench", density)


def png_payloads(size: int, count: int = 16) -> list[bytes]:
    """`count` smooth random RGB images, `size` x `size`, as PNG files (what clients send)."""
    rng = np.random.default_rng(2)
    blobs = []
    for _ in range(count):
        small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        small.resize((size, size), Image.Resampling.BILINEAR).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs


@dataclass
class Load:
    """What one load run saw."""

    requests: int = 0
    images: int = 0
    failures: int = 0
    latencies_s: list[float] = field(default_factory=list)  # successful requests only
    errors: list[str] = field(default_factory=list)  # the first few failures' reasons
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Counts, images/s and latency percentiles (ms) of the run."""
        p50, p99 = np.percentile(self.latencies_s, [50, 99]) if self.latencies_s else (0.0, 0.0)
        return {
            "requests": self.requests, "images": self.images, "failures": self.failures,
            "seconds": self.wall_s, "images_per_s": self.images / max(self.wall_s, 1e-9),
            "requests_per_s": self.requests / max(self.wall_s, 1e-9),
            "p50_ms": 1e3 * float(p50), "p99_ms": 1e3 * float(p99), "errors": self.errors,
        }  # fmt: skip


def answer_problem(answer: dict, plan: Plan) -> str | None:
    """What is wrong with a 200 answer to one request, or None: T, image count, and
    each image's mean probabilities."""
    predictions = answer.get("predictions") or []
    if answer.get("samples") != plan.served_samples or len(predictions) != plan.images_per_request:
        return f"answer with samples={answer.get('samples')}, {len(predictions)} predictions"
    error = probability_error(np.array([p["probabilities"] for p in predictions]))
    return None if error <= 1e-3 else f"probabilities off by {error:.3g}"


def form(blobs: list[bytes], plan: Plan, request: int) -> aiohttp.FormData:
    """Request number `request`: `images_per_request` PNG files, T and a seed."""
    data = aiohttp.FormData()
    for j in range(plan.images_per_request):
        data.add_field("files", blobs[(request + j) % len(blobs)], filename=f"image_{j}.png",
                       content_type="image/png")  # fmt: skip
    data.add_field("samples", str(plan.served_samples))
    data.add_field("seed", str(request))
    return data


async def post(
    session: aiohttp.ClientSession, url: str, data: aiohttp.FormData, plan: Plan
) -> str | None:
    """POST one /predict request; None when the answer is a sane 200, else why not."""
    try:
        async with session.post(f"{url}/predict", data=data) as response:
            status, body = response.status, await response.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        return f"{type(error).__name__}: {error}"
    if status != 200:
        return f"HTTP {status}: {body[:300].decode(errors='replace')}"
    try:
        return answer_problem(json.loads(body), plan)
    except (ValueError, KeyError, TypeError) as error:
        return f"malformed answer ({error}): {body[:300].decode(errors='replace')}"


async def drive(url: str, blobs: list[bytes], plan: Plan, seconds: float) -> Load:
    """`plan.clients` clients, each posting its next request as soon as the last is
    answered, for `seconds` (requests in flight then are waited for and counted)."""
    load, stop = Load(), time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, request: int) -> None:
        while time.monotonic() < stop:
            begin = time.perf_counter()
            problem = await post(session, url, form(blobs, plan, request), plan)
            load.requests += 1
            request += plan.clients
            if problem is None:
                load.latencies_s.append(time.perf_counter() - begin)
                load.images += plan.images_per_request
                continue
            load.failures += 1
            if len(load.errors) < 5:
                load.errors.append(problem)

    connector = aiohttp.TCPConnector(limit=plan.clients)
    timeout = aiohttp.ClientTimeout(total=120)
    start = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session, k) for k in range(plan.clients)))
    load.wall_s = time.monotonic() - start
    return load


def serve_env(plan: Plan, tag: str, gpu: bool) -> dict[str, str]:
    """The service's settings: JAX, the model, the base dtype, batching (and the GPU)."""
    env = {
        "UQSERVE_KERAS_BACKEND": "jax",
        "UQSERVE_MODEL": tag,
        "UQSERVE_BASE_DTYPE": plan.served_dtype,
        "UQSERVE_MAX_BATCH_SIZE": str(plan.max_batch_size),
        "UQSERVE_MAX_IMAGES": str(min(32, plan.max_batch_size)),
    }
    return {**env, "UQSERVE_GPU": "1"} if gpu else env


def measure(url: str, pid: int, plan: Plan, seconds: float) -> dict[str, Any]:
    """A warm-up load, then the measured one: its figures, the adaptive batches it made
    and the cores the service used."""
    from load_tests.run_loadtest import batch_histogram

    blobs = png_payloads(plan.served_size)
    warmup = asyncio.run(drive(url, blobs, plan, plan.warmup_s)).summary()
    before, cpu = batch_histogram(url), processes.cpu_seconds(pid)
    client = time.process_time()
    load = asyncio.run(drive(url, blobs, plan, seconds)).summary()
    client = time.process_time() - client
    after, cpu_after = batch_histogram(url), processes.cpu_seconds(pid)
    batches = after["batches"] - before["batches"]
    return {
        **load,
        "mean_images_per_batch": (after["images"] - before["images"]) / max(batches, 1.0),
        "batches": batches,
        "service_cpu_cores": (sum(cpu_after.values()) - sum(cpu.values())) / load["seconds"],
        "client_cpu_cores": client / load["seconds"],  # near 1: the client was the limit
        "warmup": warmup,
        "payload_bytes": statistics.fmean(len(blob) for blob in blobs),
    }


def served(plan: Plan, tag: str, output: Path, gpu: bool, deadline: float) -> dict[str, Any]:
    """Serve `tag` from source, wait until ready, load it, stop it -> the figures.

    The waits shrink so the part ends by `deadline` (monotonic); the service's log
    is OUTPUT/service.log.
    """
    port, log = processes.free_port(), output / "service.log"
    url = f"http://127.0.0.1:{port}"
    env = serve_env(plan, tag, gpu)
    started = time.monotonic()
    process = processes.serve("service.service:ApiService", port, log, env, cwd=ROOT)
    try:
        left = deadline - started - plan.warmup_s - plan.duration_s
        processes.wait_served(url, process, log, timeout=max(30.0, min(plan.ready_timeout_s, left)))
        ready_s = time.monotonic() - started
        LOG.info("service ready in %.1f s; loading it", ready_s)
        seconds = max(2.0, min(plan.duration_s, deadline - time.monotonic() - plan.warmup_s))
        figures = measure(url, process.pid, plan, seconds)
    finally:
        killed = processes.stop_service(process)
    settings = {k: v for k, v in env.items() if k != "UQSERVE_MODEL"}
    return {"model": tag, "size": plan.served_size, "samples": plan.served_samples,
            "base_dtype": plan.served_dtype, "clients": plan.clients,
            "images_per_request": plan.images_per_request, "settings": settings,
            "ready_s": ready_s, **figures, "killed_at_stop": killed}  # fmt: skip


def served_part(plan: Plan, report: Report, models: dict[int, Any], gpu: bool, deadline: float,
                output: Path) -> bool:  # fmt: skip
    """Export the served size's model and serve it; True when every request succeeded."""
    try:
        if plan.served_size not in models:
            models[plan.served_size] = build(plan.served_size, plan.num_classes)
        tag = export(models[plan.served_size], plan)
        LOG.info("exported %s; serving it", tag)
        result = served(plan, tag, output, gpu, deadline)
    except Exception as error:  # the service did not start, say: recorded, with its log's end
        LOG.exception("served part failed")
        report.set("served", {"error": f"{type(error).__name__}: {error}"})
        return False
    report.set("served", result)
    LOG.info("served: %.1f images/s, p50 %.0f ms, p99 %.0f ms, %.1f images per batch, "
             "%d requests, %d failures", result["images_per_s"], result["p50_ms"],
             result["p99_ms"], result["mean_images_per_batch"], result["requests"],
             result["failures"])  # fmt: skip
    return result["failures"] == 0 and result["warmup"]["failures"] == 0 and result["requests"] > 0


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets judge, and whether each is met (None: not measured)."""
    rows = data.get("inprocess", {}).get("rows", [])
    served_ = data.get("served", {})
    at = TARGETS["served_at"]
    comparable = all(served_.get(key) == value for key, value in at.items())
    images_per_s = served_.get("images_per_s")
    served_met = (
        None if images_per_s is None or not comparable
        else images_per_s >= TARGETS["served_images_per_s_min"]
    )  # fmt: skip
    return {
        "device": data.get("device", {}).get("device_kind"),
        "mc_over_deterministic": mc_target(rows),
        "served_images_per_s": images_per_s,
        "served_met": served_met,
        "served_failures": served_.get("failures"),
        "served_p50_ms": served_.get("p50_ms"),
        "served_p99_ms": served_.get("p99_ms"),
        "served_images_per_batch": served_.get("mean_images_per_batch"),
        "inprocess_rows": len(rows),
        "inprocess_skipped": len(data.get("inprocess", {}).get("skipped", [])),
    }


def terminate(signum: int, _frame: object) -> None:
    """SIGTERM (`timeout`) -> SystemExit, so the served process is stopped on the way out."""
    LOG.warning("stopped by signal %d: stopping the service, writing what was measured", signum)
    raise SystemExit(128 + signum)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; `--output` resolved once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for the results")
    parser.add_argument("--cpu", action="store_true", help="JAX on the CPU (JAX_PLATFORMS=cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, batches, T and load: every path, quickly")  # fmt: skip
    args = parser.parse_args(argv)
    args.output = args.output.resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    return args


def run(args: argparse.Namespace, report: Report) -> bool:
    """Both parts -> True when neither failed."""
    start = time.monotonic()
    plan = QUICK if args.quick else GPU
    info = device_info()
    gpu = info["platform"] == "gpu"
    report.set("device", info)
    report.set("plan", {**dataclasses.asdict(plan), "quick": args.quick, "cpu": args.cpu})
    report.set("targets", TARGETS)
    LOG.info("JAX on %s (%s); %s plan", info["platform"], info["device_kind"],
             "quick" if args.quick else "full")  # fmt: skip
    models: dict[int, Any] = {}
    ok = inprocess(plan, report, start + plan.inprocess_budget_s, models)
    ok = served_part(plan, report, models, gpu, start + plan.total_budget_s, args.output) and ok
    report.set("wall_s", time.monotonic() - start)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, terminate)
    setup_logging(args.output / "device_bench.log")
    store = Path(tempfile.mkdtemp(prefix="uqserve-device-bentoml-"))
    configure(args.cpu, store)
    report = Report(args.output / "device_bench.json")
    ok = False
    try:
        ok = run(args, report)
    finally:  # also when cut short (SIGTERM): the summary of what was measured
        shutil.rmtree(store, ignore_errors=True)
        report.set("summary", summary(report.data))
        LOG.info("results in %s (%s)", report.path, "ok" if ok else "with failures")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
