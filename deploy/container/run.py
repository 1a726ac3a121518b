"""Run an image with docker or podman, wait until it is ready, show its log, remove it.

The service listens on a port chosen here (`BENTOML_PORT`) that is published
as the same host port: that works with a bridged network (`-p` maps it) and
with the host's network (the container binds it directly, `-p` is moot).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from deploy.container.engine import ContainerError, Engine
from deploy.processes import NotReady, free_port
from deploy.processes import wait_ready as wait_for_readyz


@dataclass(frozen=True)
class Container:
    """A started container: which CLI runs it, its name, where it answers."""

    runner: str
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def run_command(
    engine: Engine, image: str, name: str, port: int, env: Mapping[str, str]
) -> list[str]:
    """The `docker|podman run -d` command line."""
    command = [engine.runner, "run", "-d", "--name", name, "-p", f"{port}:{port}"]
    for key, value in {"BENTOML_PORT": str(port), **env}.items():
        command += ["-e", f"{key}={value}"]
    return [*command, image]


@contextmanager
def started(engine: Engine, image: str, env: Mapping[str, str]) -> Iterator[Container]:
    """Start `image`; on leaving, print its log if an error is on its way out, and remove it."""
    port = free_port()
    container = Container(engine.runner, f"uqserve-test-{port}", port)
    command = run_command(engine, image, container.name, port, env)
    print("+", " ".join(command), flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ContainerError(f"`{engine.runner} run` failed: {done.stderr.strip()}")
        yield container
    except BaseException:
        print_log(container)
        raise
    finally:
        remove(container)


def is_running(container: Container) -> bool:
    """Whether the container is still up (it exits when the service fails to start)."""
    command = [container.runner, "inspect", "--format", "{{.State.Running}}", container.name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout.strip() == "true"


def wait_ready(container: Container, timeout_s: float) -> None:
    """Poll `/readyz` until it answers 200 (the model has loaded and warmed up)."""
    try:
        wait_for_readyz(
            container.url, lambda: is_running(container), lambda: "its log follows", timeout_s
        )
    except NotReady as error:
        raise ContainerError(str(error)) from None


def print_log(container: Container, lines: int = 200) -> None:
    """The end of the container's log, on stderr."""
    command = [container.runner, "logs", "--tail", str(lines), container.name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    print(f"--- last {lines} lines of {container.name}'s log ---", file=sys.stderr)
    print(done.stdout + done.stderr, file=sys.stderr)


def remove(container: Container) -> None:
    """Stop and remove the container (vfs storage holds a full copy of the image per container)."""
    done = subprocess.run(
        [container.runner, "rm", "-f", container.name], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        print(f"warning: could not remove {container.name}: {done.stderr.strip()}", file=sys.stderr)
