"""`make soak`: Locust against the built bento for minutes, watching every process's memory.

Builds the bento (unless --bento names one), serves it on a free port, waits
for /readyz, then runs Locust headless (10 minutes by default) in a thread
while this process samples the resident memory (RSS) of every process of the
`bentoml serve` tree every --interval seconds. Time zero is Locust's start.

Warm-up: the first 2 minutes or 20 % of the run, whichever is shorter
(--warmup overrides). Memory climbs while TensorFlow, caches and the adaptive
batcher settle, so growth is only measured after it: for each role (service,
server: the processes of a role summed) and for the total, the median of
the last --window samples is compared with the median of the first --window
samples after warm-up. Medians, so one noisy sample cannot decide.

Fails (exit 1, printing why) on any failed request, on growth above
--max-growth percent for any role or the total, when a service worker
was restarted (a restart would hide a leak), or when too few samples were
taken after warm-up to judge. The service is stopped with SIGTERM; whatever
of it still runs a minute later is killed (a worker sometimes hangs on
shutdown) and named in the summary. Writes under --output (reports/soak/):
memory.csv, memory.png, summary.json, Locust's CSV and HTML, service.log.

    python -m load_tests.soak --duration 10m --users 8 --interval 5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import psutil

from deploy import processes
from deploy.container.bento import build_bento
from load_tests.run_loadtest import run_locust, seconds_of, serve_env, served_throughput

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
WORKER_ROLES = ("service",)
SHUTDOWN_GRACE_S = 60.0
Sample = tuple[float, dict[str, int]]  # (seconds since Locust started, RSS bytes by process key)


def duration(text: str) -> str:
    """An argparse type: a Locust-style duration such as '90s', '10m' or '1h30m'."""
    if not re.fullmatch(r"(\d+[hms])+", text):
        raise argparse.ArgumentTypeError(f"not a duration like 90s, 10m or 1h30m: {text!r}")
    return text


def default_warmup(run_seconds: float) -> float:
    """The first 2 minutes or 20 % of the run, whichever is shorter."""
    return min(120.0, 0.2 * run_seconds)


def role_totals(sizes: dict[str, int]) -> dict[str, int]:
    """RSS bytes summed by role, plus 'total' (every process)."""
    totals: dict[str, int] = {}
    for key, size in sizes.items():
        role = processes.role_of(key)
        totals[role] = totals.get(role, 0) + size
    totals["total"] = sum(sizes.values())
    return totals


def growth(samples: list[Sample], warmup_s: float, window: int) -> dict[str, dict[str, float]]:
    """Per role and total: median MiB just after warm-up, at the end, and the growth in %.

    Empty when fewer than 2 x `window` samples were taken after warm-up (the
    two windows would overlap). A role missing from either window is left out.
    """
    after = [role_totals(sizes) for elapsed, sizes in samples if elapsed >= warmup_s]
    if len(after) < 2 * window:
        return {}
    first, last = after[:window], after[-window:]
    names = set.intersection(*(set(t) for t in first + last))
    figures = {}
    for name in sorted(names):
        start = statistics.median(t[name] for t in first) / MIB
        end = statistics.median(t[name] for t in last) / MIB
        figures[name] = {"after_warmup_mib": round(start, 2), "end_mib": round(end, 2),
                         "growth_percent": round(100.0 * (end / start - 1.0), 3)}  # fmt: skip
    return figures


def restarted_workers(samples: list[Sample]) -> list[str]:
    """Service worker processes that were not there in every sample."""
    sets = [set(sizes) for _, sizes in samples if sizes]
    if not sets:
        return []
    changed = set.union(*sets) - set.intersection(*sets)
    return sorted(key for key in changed if processes.role_of(key) in WORKER_ROLES)


def verdict(
    served: dict[str, float],
    locust_code: int,
    figures: dict[str, dict[str, float]],
    max_growth: float,
    restarted: list[str],
) -> list[str]:
    """Why the soak failed; empty when it passed."""
    reasons = []
    if served["failures"] > 0:
        reasons.append(f"{served['failures']:.0f} of {served['requests']:.0f} requests failed")
    elif locust_code != 0:
        reasons.append(f"Locust exited with code {locust_code} (a request failed?)")
    if served["requests"] == 0:
        reasons.append("no request was served")
    if not figures:
        reasons.append("too few memory samples after warm-up to measure growth")
    for name, figure in figures.items():
        if figure["growth_percent"] > max_growth:
            reasons.append(
                f"{name} memory grew {figure['growth_percent']:.2f} % after warm-up "
                f"({figure['after_warmup_mib']:.0f} -> {figure['end_mib']:.0f} MiB), "
                f"above {max_growth:g} %"
            )
    if restarted:
        reasons.append(f"workers came and went during the run: {', '.join(restarted)}")
    return reasons


def process_keys(samples: list[Sample]) -> list[str]:
    """Every process key, in order of first appearance."""
    return list(dict.fromkeys(key for _, sizes in samples for key in sizes))


def write_csv(samples: list[Sample], path: Path) -> None:
    """elapsed_s, one MiB column per process ('<role>-<pid>_mib'), total_mib.

    A process absent from a sample leaves its cell empty.
    """
    keys = process_keys(samples)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["elapsed_s", *(f"{key}_mib" for key in keys), "total_mib"])
        for elapsed, sizes in samples:
            cells = [f"{sizes[key] / MIB:.2f}" if key in sizes else "" for key in keys]
            writer.writerow([f"{elapsed:.1f}", *cells, f"{sum(sizes.values()) / MIB:.2f}"])


def plot(samples: list[Sample], warmup_s: float, path: Path, title: str) -> None:
    """The memory curve: MiB of every process and the total vs time, warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 5))
    times = [elapsed for elapsed, _ in samples]
    for key in process_keys(samples):
        points = [(t, sizes[key] / MIB) for t, sizes in samples if key in sizes]
        axes.plot(*zip(*points, strict=True), label=key)
    totals = [sum(sizes.values()) / MIB for _, sizes in samples]
    axes.plot(times, totals, color="black", linewidth=2, label="total")
    axes.axvspan(0, warmup_s, color="grey", alpha=0.2, label="warm-up")
    axes.set(xlabel="seconds since Locust started", ylabel="resident memory (MiB)", title=title)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def rss_or_empty(pid: int) -> dict[str, int]:
    """`processes.rss_bytes`, or {} once the service itself has gone."""
    try:
        return processes.rss_bytes(pid)
    except psutil.Error:
        return {}


def soak(url: str, pid: int, args: argparse.Namespace) -> tuple[int, list[Sample]]:
    """Locust in a thread; RSS of the service tree every `args.interval` s until it ends.

    Samples are taken on a fixed grid (0, interval, 2 x interval, ...) from
    Locust's start, so a slow sample does not shift the later ones.
    """
    samples: list[Sample] = []
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        locust = pool.submit(run_locust, url, args.users, args.spawn_rate, args.duration,
                             args.output)  # fmt: skip
        while True:
            sizes = rss_or_empty(pid)
            if sizes:
                samples.append((time.monotonic() - start, sizes))
            next_at = start + (int((time.monotonic() - start) / args.interval) + 1) * args.interval
            done, _ = wait([locust], timeout=max(0.0, next_at - time.monotonic()))
            if done:
                return locust.result(), samples


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("UQSERVE_MODEL", "uqserve_vgg16:latest"))
    parser.add_argument("--bento", help="a built bento tag (default: build one)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--duration", type=duration, default="10m", help="e.g. 10m, 1h, 90s")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=duration, help="default: min(2m, 20%% of --duration)")
    parser.add_argument("--window", type=int, default=5, help="samples per median (default 5)")
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent (default 5)")
    parser.add_argument("--output", type=Path, default=Path("reports") / "soak")
    args = parser.parse_args(argv)
    args.output = args.output.resolve()
    args.run_s = seconds_of(args.duration)
    args.warmup_s = seconds_of(args.warmup) if args.warmup else default_warmup(args.run_s)
    if args.run_s <= 0 or args.warmup_s >= args.run_s:
        parser.error("--duration must be positive and longer than --warmup")
    if args.interval <= 0 or args.window < 1:
        parser.error("--interval must be positive and --window at least 1")
    return args


def serve_and_soak(
    bento: str, args: argparse.Namespace
) -> tuple[int, list[Sample], bool, list[str]]:
    """Serve `bento`, soak it, stop it.

    Returns Locust's exit code, the samples, whether the service was still up
    when Locust finished, and the processes that had to be killed on shutdown
    (reported, but not a failure of the soak: the load is over by then).
    """
    port = processes.free_port()
    url, log = f"http://127.0.0.1:{port}", args.output / "service.log"
    process = processes.serve(bento, port, log, serve_env(args.model))
    try:
        processes.wait_served(url, process, log)
        code, samples = soak(url, process.pid, args)
        survived = process.poll() is None
    finally:
        killed = processes.stop_service(process, SHUTDOWN_GRACE_S)
    if killed:
        print(f"soak: killed {killed} after a {SHUTDOWN_GRACE_S:.0f} s shutdown", file=sys.stderr)
    return code, samples, survived, killed


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    bento = args.bento or build_bento(args.model, ROOT / "bentofile.yaml")
    code, samples, survived, killed = serve_and_soak(bento, args)
    served = served_throughput(args.output, args.run_s)
    figures = growth(samples, args.warmup_s, args.window)
    reasons = verdict(served, code, figures, args.max_growth, restarted_workers(samples))
    if not survived:
        reasons.append("the service exited during the run")
    summary = {
        "bento": bento, "model": args.model, "users": args.users, "duration": args.duration,
        "warmup_s": args.warmup_s, "interval_s": args.interval, "window": args.window,
        "max_growth_percent": args.max_growth, "memory_samples": len(samples),
        "processes": process_keys(samples), "served": served, "growth": figures,
        "passed": not reasons, "reasons": reasons, "killed_on_shutdown": killed,
    }  # fmt: skip
    write_report(summary, samples, args)
    return 1 if reasons else 0


def write_report(summary: dict, samples: list[Sample], args: argparse.Namespace) -> None:
    """summary.json, memory.csv and memory.png under `args.output`; the verdict on stdout."""
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    write_csv(samples, args.output / "memory.csv")
    verdict_text = "passed" if summary["passed"] else "FAILED"
    title = f"soak {summary['duration']}, {summary['users']} users: {verdict_text}"
    plot(samples, args.warmup_s, args.output / "memory.png", title)
    print(json.dumps(summary, indent=2))
    for reason in summary["reasons"]:
        print(f"soak failed: {reason}", file=sys.stderr)
    print(f"soak {verdict_text}; reports in {args.output}")


if __name__ == "__main__":
    sys.exit(main())
