"""`make bench` as a user runs it, shortened: the in-process table, the built bento
under Locust with every answer checked, then uqserve against the plain peer service.
Relative output paths, as the Makefile passes them, so a path resolved against the
wrong folder fails here and not in a user's hands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the environment running the tests, as the Makefile's VENV

pytestmark = pytest.mark.e2e


def test_make_bench_runs_on_a_short_budget_with_no_failed_request(tag, bento, tmp_path):
    output = Path(os.path.relpath(tmp_path / "bench", ROOT))  # relative, as in the Makefile
    command = [
        "make", "-o", str(VENV / ".installed"), "bench", f"VENV={VENV}", f"MODEL={tag}",
        f"BENTO={bento}", f"BENCH_OUTPUT={output}",
        "BENCH_ARGS=--size 32 --samples 2 --batches 1 2 --repeats 1 --naive-passes 1 "
        "--base-weights none",
        "USERS=4", "SPAWN_RATE=4", "DURATION=15s",
        "LOADTEST_ARGS=--inprocess-seconds 3 --auth --digest-flood 1",  # keys on, an admin polling
        "PEER_ARGS=--users 2 --duration 5s --warmup 2s --rounds 1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table = json.loads((ROOT / output / "bench.json").read_text())
    assert {(r["batch"], r["samples"]) for r in table["rows"]} == {(1, 2), (2, 2)}

    served = ROOT / output / "served"
    summary = json.loads((served / "summary.json").read_text())
    assert summary["served"]["failures"] == 0
    assert summary["served"]["requests"] > 0
    assert summary["auth"] is True and summary["digest_flood_users"] == 1
    tasks = summary["served"]["per_task"]
    assert set(tasks) == {"/predict [1 image]", "/predict [4 images]", "/predict_array",
                          "/v2/models/[model]/infer"}, tasks  # fmt: skip
    assert all(task["requests"] > 0 and task["failures"] == 0 for task in tasks.values()), tasks
    assert summary["adaptive_batches"]["images"] > 0
    assert summary["weights"]["unchanged"] is True  # BN statistics included, bit for bit
    assert summary["weights"]["sha256_before"] == summary["weights"]["sha256_after"]
    assert summary["inprocess_images_per_s"] > 0
    assert summary["cpu_cores"]["service"] > 0
    assert 0 < summary["inprocess_cpu_cores"] <= summary["cpu_cores"]["machine"] + 0.5
    assert (served / "locust_stats.csv").is_file() and (served / "report.html").is_file()

    peer = json.loads((ROOT / output / "peer" / "summary.json").read_text())
    assert [r["run"] for r in peer["runs"]] == ["1-uqserve", "1-peer"]
    for run in peer["runs"]:
        assert run["failures"] == 0 and run["exit_code"] == 0, run
        assert run["requests"] > 0 and run["images_per_batch"] >= 1.0, run
        assert run["p50_ms"] <= run["p99_ms"]
    assert peer["samples"] == 100
    assert peer["uqserve_over_peer"] > 0 and peer["inprocess"]["uqserve_ms"] > 0
    assert peer["weights"]["unchanged"] is True
