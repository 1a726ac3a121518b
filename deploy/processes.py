"""The one set of process helpers: start `bentoml serve`, wait for it, watch it, stop it.

Used by the tests, the load tests, the soak and the container test alike.

`bentoml serve` starts an arbiter, the service's worker processes (HTTP and
the model, `UQSERVE_WORKERS` of them) and a Prometheus helper. The load test
reports the CPU each role used; the soak test tracks the resident memory of
every one of them.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

BENTOML = str(Path(sys.executable).with_name("bentoml"))


class NotReady(RuntimeError):
    """A service exited during start-up or did not become ready in time; says which."""


def bind_free_port() -> socket.socket:
    """A TCP socket bound to a free loopback port below the OS's ephemeral range.

    BentoML picks the ports of its inner services with bind(0), from the
    ephemeral range (32768 and up on Linux); a port taken the same way could
    be handed to one of them before the server binds it, and the server
    would fail to start. So: a random port in 20000-31999.
    """
    for port in random.Random().sample(range(20000, 32000), 200):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        return sock
    raise RuntimeError("no free port between 20000 and 31999")


def free_port() -> int:
    """A free port for a server started next (see `bind_free_port`)."""
    with bind_free_port() as sock:
        return sock.getsockname()[1]


def serve(
    target: str, port: int, log: Path, env: Mapping[str, str], cwd: Path | None = None
) -> subprocess.Popen:
    """`bentoml serve <target>` (a bento tag or `module:Service`) on 127.0.0.1:`port`.

    Runs in its own process group (so `stop_service` reaches every worker),
    with `env` added to this process's environment, its output in `log`.
    """
    command = [BENTOML, "serve", target, "--port", str(port), "--host", "127.0.0.1"]
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def log_tail(log: Path, chars: int = 3000) -> str:
    """The end of a service's log, for an error message."""
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError as error:
        return f"(no log: {error})"


def wait_ready(
    url: str, alive: Callable[[], bool], describe: Callable[[], str], timeout: float = 300.0
) -> None:
    """Poll `<url>/readyz` until it answers 200; raise `NotReady` if `alive()` turns false
    first or `timeout` seconds pass. `describe()` (where to look: a log's end, say) ends
    the error message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise NotReady(f"{url}: the service exited during start-up; {describe()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise NotReady(f"{url}: /readyz did not answer 200 within {timeout:.0f} s; {describe()}")


def wait_served(url: str, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    """`wait_ready` for a `serve` subprocess and its log."""
    wait_ready(
        url, lambda: process.poll() is None, lambda: f"its log ends:\n{log_tail(log)}", timeout
    )


def tree(pid: int) -> list[psutil.Process]:
    """The process `pid` and all its descendants that are still alive."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def role(process: psutil.Process) -> str:
    """'service' (a worker) or 'server' (the arbiter and any helper), from the command line."""
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    return "service" if "_bentoml_impl.worker.service" in command else "server"


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

    Returns the '<role>-<pid>' of every process that had to be killed. A
    worker sometimes hangs on shutdown and the arbiter waits for it;
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
