"""Serve a built bento in a subprocess, as a container would (`bentoml serve <tag>`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from load_tests.procs import stop_service
from load_tests.run_loadtest import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_ready(base: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll /readyz; fail the test with the server log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"server not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def served(
    bento: str, tag: str, workdir: Path, **env: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`bentoml serve <bento>` on a free port with extra `UQSERVE_*` env; yields (URL, process)."""
    port = free_port()
    log = workdir / "serve.log"
    environ = {**os.environ, "UQSERVE_MODEL": tag, **env}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", bento, "--port", str(port), "--host", "127.0.0.1"],
            cwd=workdir, env=environ, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log)
        yield base, process
    finally:
        stop_service(process)
