"""The processes of a running `bentoml serve`: CPU time and resident memory by role.

`bentoml serve` starts an arbiter, one worker per service (the HTTP-facing
`uqserve` API service, the `uqserve_model` model service) and a Prometheus
helper. The load test reports the CPU each role used; the soak test tracks the
resident memory of every one of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil


def tree(pid: int) -> list[psutil.Process]:
    """The process `pid` and all its descendants that are still alive."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def role(process: psutil.Process) -> str:
    """'model', 'api' or 'server' (the arbiter and any helper), from the command line."""
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    if "_bentoml_impl.worker.service" not in command:
        return "server"
    return "model" if "--service-name uqserve_model" in command else "api"


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far, summed by role."""
    totals: dict[str, float] = {}
    for process in tree(pid):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        name = role(process)
        totals[name] = totals.get(name, 0.0) + times.user + times.system
    return totals


def rss_bytes(pid: int) -> dict[str, int]:
    """Resident memory of every process, keyed '<role>-<pid>'."""
    sizes: dict[str, int] = {}
    for process in tree(pid):
        try:
            sizes[f"{role(process)}-{process.pid}"] = process.memory_info().rss
        except psutil.Error:
            continue
    return sizes


def role_of(key: str) -> str:
    """The role part of an `rss_bytes` key: 'model-1234' -> 'model'."""
    return key.rsplit("-", 1)[0]


def stop_service(process: subprocess.Popen, grace: float = 60.0) -> list[str]:
    """SIGTERM the service; SIGKILL what is left of its tree after `grace` s.

    Returns the '<role>-<pid>' of every process that had to be killed. The
    API worker sometimes hangs on shutdown and the arbiter waits for it;
    it runs in its own process group, so the workers are listed before the
    SIGTERM, while they still hang from the arbiter. Processes that are
    already gone are skipped, never an error.
    """
    workers: list[psutil.Process] = []
    if process.poll() is None:
        with contextlib.suppress(psutil.Error):
            workers = tree(process.pid)[1:]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    killed = []
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        killed.append(f"server-{process.pid}")
        process.kill()
        process.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=5)
    for leftover in alive:
        killed.append(f"{role(leftover)}-{leftover.pid}")
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    return killed
