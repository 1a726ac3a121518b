"""The bento and its image: `bentoml build`, `bentoml containerize`, image facts.

Every BentoML step runs as a `bentoml` subprocess, so the model and bento
stores are the ones `BENTOML_HOME` names at that moment (the tiny test model
lives in a temporary one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.container.engine import ContainerError, Engine

ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).with_name("bentoml"))
IMAGE_NAME = "uqserve"
ALIAS = "latest"


def _run(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    """Run `command`, return its stdout; on failure raise with the end of its stderr."""
    done = subprocess.run(
        list(command), cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ContainerError(
            f"`{' '.join(command)}` failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return done.stdout


def build_bento(model: str, bentofile: Path) -> str:
    """`bentoml build` of the service serving `model`; returns the new bento's tag."""
    env = {**os.environ, "UQSERVE_MODEL": model}
    out = _run([BENTOML, "build", "-f", str(bentofile), "-o", "tag", str(ROOT)], env)
    found = re.search(r"__tag__:(\S+)", out)
    if found is None:
        raise ContainerError(f"`bentoml build` printed no tag:\n{out[-2000:]}")
    return found.group(1)


def bento_info(bento: str) -> dict:
    """What `bentoml get <bento> -o json` says (name, version, services and their models)."""
    return json.loads(_run([BENTOML, "get", bento, "-o", "json"]))


def bento_model(info: dict) -> str:
    """The one model tag the bento's service holds (UQSERVE_MODEL in the container)."""
    tags = {model["tag"] for service in info["services"] for model in service["models"]}
    if len(tags) != 1:
        raise ContainerError(f"expected the bento to hold one model, found {sorted(tags)}")
    return tags.pop()


def image_tags(info: dict, name: str = IMAGE_NAME) -> list[str]:
    """`<name>:<bento version>` and the moving alias `<name>:latest`."""
    return [f"{name}:{info['version']}", f"{name}:{ALIAS}"]


def containerize(bento: str, tags: Sequence[str], engine: Engine, opts: Sequence[str]) -> None:
    """`bentoml containerize`, its output streamed (the build takes minutes: TensorFlow)."""
    command = [BENTOML, "containerize", bento, "--backend", engine.backend]
    for tag in tags:
        command += ["-t", tag]
    for opt in opts:
        command += ["--opt", opt]
    print("+", " ".join(command), flush=True)
    code = subprocess.run(command, cwd=ROOT, check=False).returncode
    if code != 0:
        raise ContainerError(f"`bentoml containerize` failed (exit {code})")


def image_size(engine: Engine, image: str) -> int:
    """The image's size in bytes, as the runner reports it."""
    out = _run([engine.runner, "image", "inspect", "--format", "{{.Size}}", image])
    return int(out.split()[0])


def remove_images(engine: Engine, tags: Sequence[str]) -> None:
    """Untag the image (removing it with its last tag); errors are reported, not raised."""
    done = subprocess.run(
        [engine.runner, "rmi", *tags], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        print(f"note: could not remove {' '.join(tags)}: {done.stderr.strip()}", file=sys.stderr)
