"""`python -m deploy.container build|test`: the bento's container image, built and tested.

    build   bento (from UQSERVE_MODEL and BENTOFILE, unless --bento) -> image
            `<bento name>:<version>` and `<bento name>:latest`, with plain
            `bentoml containerize` (Docker backend where its engine answers,
            else buildah). `make container`.
    test    an image (built here from the tiny model with --tiny, from the
            model store's model otherwise, or --image) run with docker or
            podman: /readyz, /metadata, /predict on examples/digit_7.png;
            the container is always removed. `make container-test`.

On a machine without a Docker engine, `test` first runs
prepare_no_docker_host.sh (buildah, podman and a local base image); `build`
expects that done (`eval "$(deploy/container/prepare_no_docker_host.sh)"`).
Exit status: 0 when everything passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from deploy.container import bento as bentos
from deploy.container.checks import check_service
from deploy.container.engine import ContainerError, Engine, detect, prepare_no_docker_host
from deploy.container.run import started, wait_ready

ROOT = bentos.ROOT
EXAMPLE = ROOT / "examples" / "digit_7.png"
GIB = 2**30


@contextmanager
def step(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Time the block into `timings[name]` and say so."""
    print(f"== {name}", flush=True)
    start = time.monotonic()
    try:
        yield
    finally:
        timings[name] = time.monotonic() - start
        print(f"== {name}: {timings[name]:.0f} s", flush=True)


@contextmanager
def bentoml_home(path: str) -> Iterator[None]:
    """BENTOML_HOME=`path` for the BentoML subprocesses started inside the block."""
    before = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = before


def disk_used_gib() -> float:
    """Used space of the file system holding the container storage (/var), in GiB."""
    return shutil.disk_usage("/var" if Path("/var").is_dir() else "/").used / GIB


def export_tiny_model() -> str:
    """The tiny model exported (in a subprocess: TensorFlow stays out of this one); its tag."""
    command = [sys.executable, "-m", "deploy.container.tiny"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ContainerError(f"exporting the tiny model failed:\n{done.stderr[-3000:]}")
    return done.stdout.split()[-1]


def build_image(
    args: argparse.Namespace, engine: Engine, timings: dict[str, float]
) -> tuple[list[str], str]:
    """Bento (unless given) -> image; returns its tags (versioned first) and the bento's model."""
    tiny = getattr(args, "tiny", False)  # only `test` has --tiny
    with ExitStack() as stack:
        model = args.model
        if tiny:
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="uqserve-ctest-"))
            stack.enter_context(bentoml_home(home))
            with step("tiny model", timings):
                model = export_tiny_model()
        bento = args.bento
        if bento is None:
            with step("bento", timings):
                bento = bentos.build_bento(model, args.bentofile)
        info = bentos.bento_info(bento)
        name = args.name or info["name"] + ("-test" if tiny else "")
        tags = bentos.image_tags(info, name)
        with step("containerize", timings):
            bentos.containerize(f"{info['name']}:{info['version']}", tags, engine, args.opt)
    return tags, bentos.bento_model(info)


def serve_and_check(
    args: argparse.Namespace, engine: Engine, image: str, model: str, timings: dict[str, float]
) -> None:
    """Run `image` serving `model`, wait for /readyz, check; the container is removed either way."""
    with ExitStack() as stack:
        with step("start", timings):  # vfs storage copies the whole image here
            container = stack.enter_context(started(engine, image, {"UQSERVE_MODEL": model}))
        with step("ready", timings):
            wait_ready(container, args.ready_timeout)
        running_gib = disk_used_gib()
        with step("checks", timings):
            answer = check_service(
                container.url, args.example, args.samples, args.seed, args.expect_label
            )
    label, confidence = answer["label"], answer["confidence"]
    print(f"ok: {answer['model']} says {label!r} ({confidence:.3f}) for {args.example.name}")
    print(f"disk used while the container ran: {running_gib:.1f} GiB")


def report(engine: Engine, image: str, timings: dict[str, float], disk_before: float) -> None:
    """Image size, disk use, and the time of each step."""
    size = bentos.image_size(engine, image) / GIB
    now = disk_used_gib()
    print(f"image {image}: {size:.2f} GiB; disk used {now:.1f} GiB (before: {disk_before:.1f})")
    print("times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))


def cmd_build(args: argparse.Namespace) -> None:
    """`make container`."""
    timings: dict[str, float] = {}
    disk_before = disk_used_gib()
    engine = detect()
    tags, _ = build_image(args, engine, timings)
    report(engine, tags[0], timings, disk_before)
    print(f"run it: {engine.runner} run --rm -p 3000:3000 {tags[-1]}")


def cmd_test(args: argparse.Namespace) -> None:
    """`make container-test`."""
    timings: dict[str, float] = {}
    disk_before = disk_used_gib()
    start = time.monotonic()
    with step("prepare", timings):
        prepare_no_docker_host()
    engine = detect()
    tags, model = ([args.image], args.model) if args.image else build_image(args, engine, timings)
    try:
        serve_and_check(args, engine, tags[0], model, timings)
        timings["total"] = time.monotonic() - start
        report(engine, tags[0], timings, disk_before)
    finally:
        if args.tiny and not args.keep_image:
            bentos.remove_images(engine, tags)


def parser() -> argparse.ArgumentParser:
    """The command line: shared options, then `build` and `test`."""
    common = argparse.ArgumentParser(add_help=False)
    model = os.environ.get("UQSERVE_MODEL", "uqserve_vgg16:latest")
    bentofile = Path(os.environ.get("BENTOFILE") or "bentofile.yaml")
    common.add_argument("--model", default=model, help="model store tag (default: $UQSERVE_MODEL)")
    common.add_argument("--bentofile", type=Path, default=bentofile, help="default: $BENTOFILE")
    common.add_argument("--name", help="image name (default: the bento's name)")
    opt_help = "passed to `bentoml containerize --opt` (repeatable)"
    common.add_argument("--opt", action="append", default=[], help=opt_help)
    top = argparse.ArgumentParser(prog="python -m deploy.container", description=__doc__)
    top.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = top.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", parents=[common], help="bento -> image")
    build.add_argument("--bento", help="a built bento tag (default: build one)")
    test = commands.add_parser("test", parents=[common], help="build, run and check an image")
    source = test.add_mutually_exclusive_group()
    tiny_help = "build from a tiny untrained model in a temporary model store"
    source.add_argument("--tiny", action="store_true", help=tiny_help)
    source.add_argument("--bento", help="build from this bento")
    source.add_argument("--image", help="test this image; pass --model if it is not the default")
    test.add_argument("--keep-image", action="store_true", help="keep the --tiny image")
    test.add_argument("--ready-timeout", type=float, default=900.0, help="seconds (default 900)")
    test.add_argument("--example", type=Path, default=EXAMPLE)
    test.add_argument("--samples", type=int, default=8)
    test.add_argument("--seed", type=int, default=1234)
    test.add_argument("--expect-label", help="fail unless the predicted label is this")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand; exit 1 with a message on a failed step."""
    args = parser().parse_args(argv)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    try:
        if args.command == "build":
            cmd_build(args)
        else:
            cmd_test(args)
    except ContainerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
