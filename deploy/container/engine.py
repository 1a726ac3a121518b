"""Which tools build and run the image: Docker where its engine answers, else buildah + podman.

A `docker` command alone is not enough (a CLI without a daemon is common on CI
machines): only a `docker info` that succeeds selects Docker.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PREPARE_SCRIPT = Path(__file__).with_name("prepare_no_docker_host.sh")


class ContainerError(RuntimeError):
    """A step of building or testing the image failed; the message says which and why."""


@dataclass(frozen=True)
class Engine:
    """`backend`: `bentoml containerize --backend`; `runner`: the CLI that runs images."""

    backend: str
    runner: str


def docker_answers() -> bool:
    """True when a Docker engine answers `docker info`."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def detect() -> Engine:
    """Docker when its engine answers, else buildah (build) and podman (run)."""
    if docker_answers():
        return Engine(backend="docker", runner="docker")
    missing = [tool for tool in ("buildah", "podman") if shutil.which(tool) is None]
    if missing:
        raise ContainerError(
            f"no Docker engine answers and {' and '.join(missing)} is not installed: install "
            "Docker, or buildah and podman (where Docker Hub cannot be reached, "
            f'`eval "$({PREPARE_SCRIPT})"` installs and configures them)'
        )
    return Engine(backend="buildah", runner="podman")


def prepare_no_docker_host() -> None:
    """Where no Docker engine answers, run the machine-specific prepare script.

    It installs buildah and podman, configures them and makes the base image
    (see the script); its `export` lines are applied to this process's
    environment, which every later build and run command inherits.
    """
    if docker_answers():
        return
    done = subprocess.run(
        ["bash", str(PREPARE_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise ContainerError(f"{PREPARE_SCRIPT.name} failed (exit {done.returncode})")
    os.environ.update(parse_exports(done.stdout))


def parse_exports(text: str) -> dict[str, str]:
    """`export NAME='value'` lines (shell quoting) -> {NAME: value}; other lines are ignored."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            values[name] = value
    return values
