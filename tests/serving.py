"""Serve a built bento in a subprocess, as a container would (`bentoml serve <tag>`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from deploy import processes

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(processes.BENTOML).parent


@contextmanager
def served(
    bento: str, tag: str, workdir: Path, **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`bentoml serve <bento>` on a free port with extra `UQSERVE_*` env; yields (URL, process).

    A server that exits during start-up, or is not ready within 180 s, fails
    the test with the end of its log.
    """
    port = processes.free_port()
    log = workdir / "serve.log"
    home = {"BENTOML_HOME": str(_private_home(workdir))}
    process = processes.serve(bento, port, log, {"UQSERVE_MODEL": tag, **home, **env}, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            processes.wait_served(base, process, log, timeout=180)
        except processes.NotReady as error:
            pytest.fail(str(error))
        yield base, process
    finally:
        processes.stop_service(process)


def _private_home(workdir: Path) -> Path:
    """A BentoML home of this server's own, sharing the session's models and bentos.

    `bentoml serve` empties `$BENTOML_HOME/prometheus_multiproc_dir` when it
    starts: with one home, a server started later would wipe the metrics of
    one still serving (the session's `served_bento`), freezing its /metrics.
    """
    shared, home = Path(os.environ["BENTOML_HOME"]), workdir / "bentoml-home"
    home.mkdir(exist_ok=True)
    for name in ("models", "bentos"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        if not (home / name).exists():
            (home / name).symlink_to(shared / name, target_is_directory=True)
    return home


def predict_file(base: str, blob: bytes, seed: int = 7) -> dict:
    """POST one PNG to `base`/predict at T=8 with `seed`; the 200 answer's JSON."""
    response = httpx.post(
        f"{base}/predict",
        files={"files": ("digit.png", blob, "image/png")},
        data={"samples": "8", "seed": str(seed)},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def batch_counts(base: str) -> tuple[float, float]:
    """Images and batches the service has run, from its /metrics histogram."""
    text = httpx.get(f"{base}/metrics").text
    return (
        metric(text, "uqserve_batch_images_sum"),
        metric(text, "uqserve_batch_images_count"),
    )


def metric(text: str, name: str) -> float:
    """The sum of every sample of `name` in a Prometheus text page."""
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    assert values, f"{name} not in /metrics"
    return sum(values)
