"""The wheels the GPU machine lacks to serve and benchmark uqserve on JAX, fetched here.

The GPU machine (Python 3.12, JAX, PyTorch, NumPy, SciPy, scikit-learn,
Pillow, aiohttp, prometheus-client; no TensorFlow, no network) gets this
repository's working tree and at most 64 MiB in all. `load_tests/device_check.sh`
installs what this command downloads there, so the service and
`load_tests.device_bench` run with the same Keras and BentoML as `.venv`:

    python -m load_tests.device_wheels [--dest .device/wheels]   # here, with PyPI
    bash load_tests/device_check.sh OUT_DIR                        # there

What is fetched: the closure of ROOTS (what `service/`, `models/`, `adapters/`
and the benchmark import) for CPython 3.12 on manylinux x86_64, resolved by
pip against this environment's versions as constraints (so the pins equal
`.venv`'s wherever a 3.12 wheel of that version exists), less DEVICE_HAS and
whatever is reachable only through it. Writes the wheels, `manifest.json`
(name, version, file, bytes, sha256 of each) and a table; exits non-zero when
the wheels and the working tree that travels with them exceed the limit.

`--files` prints the manifest's wheel files (for the installer) and
`--verify` checks, where they are installed, that each one is there at its
version and that every requirement of theirs is met (by a wheel or by what
the machine already had).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".device" / "wheels"
MANIFEST = "manifest.json"
LIMIT_BYTES = 64 * 2**20  # what travels to the GPU machine: working tree and wheels together

# What `service/`, `models/`, `adapters/`, `deploy/processes.py` and
# `load_tests/device_bench.py` import; their closure is what the machine needs.
ROOTS = ("keras", "bentoml", "pydantic", "pyyaml", "psutil", "python-multipart", "starlette")
# Already on the GPU machine, with their own needs: JAX (and its CUDA plugins),
# the scientific stack, Pillow, aiohttp and prometheus-client, PyTorch's needs.
# typing-extensions is left out on purpose: pydantic needs a recent one, and it is small.
DEVICE_HAS = frozenset({
    "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin",
    "jax-cuda13-pjrt", "ml-dtypes", "opt-einsum", "numpy", "scipy", "scikit-learn", "joblib",
    "threadpoolctl", "pillow", "aiohttp", "aiohappyeyeballs", "aiosignal", "async-timeout",
    "attrs", "frozenlist", "multidict", "propcache", "yarl", "idna", "prometheus-client",
    "torch", "triton", "filelock", "sympy", "mpmath", "networkx", "jinja2", "markupsafe",
    "fsspec", "setuptools", "tensorflow",
})  # fmt: skip
PYTHON_VERSION = "3.12"
PLATFORMS = (  # pip matches each tag exactly; the newest is below the machine's glibc
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64",
    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
    "manylinux1_x86_64",
)  # fmt: skip
TARGET_MARKERS = {  # PEP 508 environment of the GPU machine's Python
    "python_version": PYTHON_VERSION, "python_full_version": f"{PYTHON_VERSION}.3",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
    "os_name": "posix", "extra": "",
}  # fmt: skip


@dataclass(frozen=True)
class Package:
    """One resolved distribution: its version and what it requires (Requires-Dist lines)."""

    version: str
    requires: tuple[str, ...] = ()


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: 'PyYAML', 'pyyaml' -> 'pyyaml'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def needed(requirement: str, markers: Mapping[str, str] = TARGET_MARKERS) -> str | None:
    """The normalized name a Requires-Dist line asks for on the target, or None when its
    marker is false there (an extra not asked for, another Python or platform)."""
    from packaging.requirements import Requirement  # not needed by `--files`: a bare Python

    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate(dict(markers)):
        return None
    return normalize(parsed.name)


def closure(
    roots: Iterable[str], graph: Mapping[str, Package], exclude: Iterable[str] = DEVICE_HAS
) -> tuple[list[str], list[str]]:
    """(to carry, left to the machine): every package reachable from `roots` in `graph`,
    never going through an excluded one. Names missing from `graph` are ones pip found
    not needed on the target, and are skipped. Both lists are sorted."""
    excluded = {normalize(name) for name in exclude}
    carry, left = set(), set()
    pending = [normalize(root) for root in roots]
    while pending:
        name = pending.pop()
        if name in carry or name in left or name not in graph:
            continue
        if name in excluded:
            left.add(name)
            continue
        carry.add(name)
        pending.extend(n for r in graph[name].requires if (n := needed(r)) is not None)
    return sorted(carry), sorted(left)


def environment_pins() -> dict[str, str]:
    """Every distribution of this environment (uqserve itself aside) -> its version."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) != "uqserve":
            pins.setdefault(normalize(name), dist.version)
    return pins


def target_flags() -> list[str]:
    """pip's flags for binary wheels of the GPU machine's CPython on manylinux x86_64."""
    flags = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def pip(*arguments: str) -> None:
    """Run this Python's pip; raise with its output's end when it fails."""
    command = [sys.executable, "-m", "pip", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"pip failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}"
        )


def resolve(roots: Iterable[str], pins: Mapping[str, str]) -> dict[str, Package]:
    """pip's resolution of `roots` for the target, `pins` as constraints -> the graph.

    A dry run: pip reads the wheels' metadata (from the index when it has it)
    but installs nothing.
    """
    with tempfile.TemporaryDirectory(prefix="uqserve-wheels-") as work:
        constraints = Path(work) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        report = Path(work) / "report.json"
        pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--target", str(Path(work) / "target"), "-c", str(constraints), *target_flags(),
            *roots)  # fmt: skip
        items = json.loads(report.read_text())["install"]
    return {
        normalize(item["metadata"]["name"]): Package(
            item["metadata"]["version"], tuple(item["metadata"].get("requires_dist") or ())
        )
        for item in items
    }


def wheel_name(file: str) -> tuple[str, str]:
    """(normalized name, version) from a wheel's file name (PEP 427)."""
    parts = file.removesuffix(".whl").split("-")
    if len(parts) < 5 or not file.endswith(".whl"):
        raise ValueError(f"Invalid value for `file`: expected a wheel file name, received {file!r}")
    return normalize(parts[0]), parts[1]


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(pins: Mapping[str, str], dest: Path) -> None:
    """Exactly these wheels into `dest` (no dependencies); wheels of other packages or
    versions left there from an earlier run are deleted first."""
    from packaging.version import Version

    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        name, version = wheel_name(old.name)
        if pins.get(name) is None or Version(pins[name]) != Version(version):
            old.unlink()
    wanted = [f"{name}=={version}" for name, version in sorted(pins.items())]
    pip("download", "--no-deps", "--quiet", "--dest", str(dest), *target_flags(), *wanted)


def build_manifest(dest: Path, pins: Mapping[str, str], left: Iterable[str]) -> dict:
    """The manifest of the wheels in `dest`: one entry per pinned package, sorted.

    Raises when a pinned package has no wheel there, or has several.
    """
    files: dict[str, list[Path]] = {}
    for path in dest.glob("*.whl"):
        files.setdefault(wheel_name(path.name)[0], []).append(path)
    missing = sorted(set(pins) - set(files))
    several = sorted(name for name, paths in files.items() if len(paths) > 1)
    if missing or several:
        raise ValueError(
            f"Invalid wheel folder {dest}: expected one wheel per package, "
            f"received none for {missing} and several for {several}"
        )
    wheels = [
        {"name": name, "version": wheel_name(path.name)[1], "file": path.name,
         "bytes": path.stat().st_size, "sha256": sha256(path)}
        for name in sorted(pins)
        for path in files[name]
    ]  # fmt: skip
    return {
        "python_version": PYTHON_VERSION,
        "platforms": list(PLATFORMS),
        "roots": list(ROOTS),
        "left_to_device": sorted(left),
        "wheels": wheels,
        "total_bytes": sum(wheel["bytes"] for wheel in wheels),
    }


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the working tree that travels: tracked files and untracked ones git does
    not ignore, as they are on disk now (a deleted tracked file counts 0)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    paths = {root / name for name in listed.split("\0") if name}
    return sum(path.stat().st_size for path in paths if path.is_file() and not path.is_symlink())


def over_budget(wheels: int, tree: int, limit: int = LIMIT_BYTES) -> str | None:
    """Why wheels + tree do not fit in `limit` bytes, or None when they do."""
    if wheels + tree <= limit:
        return None
    return (
        f"the wheels ({mib(wheels)}) and the working tree ({mib(tree)}) make "
        f"{mib(wheels + tree)}, over the {mib(limit)} that may travel to the GPU machine: "
        "carry fewer wheels (add what the machine has to DEVICE_HAS) or shrink the tree"
    )


def mib(size: int) -> str:
    """Bytes as MiB, two decimals."""
    return f"{size / 2**20:.2f} MiB"


def format_table(manifest: Mapping, tree: int) -> str:
    """A Markdown table of the wheels, then the totals."""
    lines = ["| wheel | version | size |", "| --- | --- | --- |"]
    lines += [f"| {w['name']} | {w['version']} | {mib(w['bytes'])} |" for w in manifest["wheels"]]
    total = manifest["total_bytes"]
    lines += [
        f"| **{len(manifest['wheels'])} wheels** | | **{mib(total)}** |",
        "",
        f"working tree {mib(tree)}; wheels + tree {mib(total + tree)} "
        f"of {mib(manifest.get('limit_bytes', LIMIT_BYTES))}",
        f"left to the machine: {', '.join(manifest['left_to_device'])}",
    ]
    return "\n".join(lines)


def read_manifest(dest: Path) -> dict:
    """`dest`/manifest.json, or a clear error when there is none."""
    path = dest / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} in {dest}: run `python -m load_tests.device_wheels --dest {dest}`"
        )
    return json.loads(path.read_text())


def verify(manifest: Mapping) -> list[str]:
    """What is wrong where the wheels are installed: a wheel missing or at another version,
    or a requirement of one of them not met by what is installed. Empty when all is well."""
    from packaging.version import Version

    problems = []
    for wheel in manifest["wheels"]:
        try:
            dist = importlib.metadata.distribution(wheel["name"])
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{wheel['name']} {wheel['version']} is not installed")
            continue
        if Version(dist.version) != Version(wheel["version"]):
            problems.append(f"{wheel['name']} is {dist.version}, not {wheel['version']}")
        problems += [f"{wheel['name']} needs {r}: {why}" for r, why in unmet(dist.requires or [])]
    return problems


def unmet(requires: Iterable[str]) -> list[tuple[str, str]]:
    """The requirements (Requires-Dist lines) this interpreter does not meet, with why."""
    from packaging.requirements import Requirement

    found = []
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            found.append((line, "not installed"))
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            found.append((line, f"{version} is installed"))
    return found


def fetch(dest: Path, limit: int) -> int:
    """Resolve, download, write the manifest and print the table; 1 when over `limit`."""
    pins = environment_pins()
    absent = [root for root in ("keras", "bentoml") if root not in pins]
    if absent:
        raise RuntimeError(
            f"{', '.join(absent)} not installed in {sys.prefix}: run this with the project's "
            "environment (`.venv/bin/python -m load_tests.device_wheels`), whose versions it pins"
        )
    graph = resolve(ROOTS, pins)
    carry, left = closure(ROOTS, graph)
    versions = {name: graph[name].version for name in carry}
    download(versions, dest)
    manifest = build_manifest(dest, versions, left)
    tree = tree_bytes()
    manifest |= {"tree_bytes": tree, "limit_bytes": limit}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(format_table(manifest, tree))
    drifted = {n: (pins[n], v) for n, v in versions.items() if n in pins and pins[n] != v}
    if drifted:
        print(f"versions other than .venv's (no 3.12 wheel of those): {drifted}")
    problem = over_budget(manifest["total_bytes"], tree, limit)
    if problem is not None:
        print(f"device wheels: {problem}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="the wheel folder")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_BYTES / 2**20,
                        help="most MiB of wheels and working tree together")  # fmt: skip
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--files", action="store_true", help="print the manifest's wheel files")
    action.add_argument("--verify", action="store_true",
                        help="check the installed wheels and their requirements")  # fmt: skip
    args = parser.parse_args(argv)
    dest = args.dest.resolve()
    if args.files:
        print("\n".join(wheel["file"] for wheel in read_manifest(dest)["wheels"]))
        return 0
    if args.verify:
        problems = verify(read_manifest(dest))
        for problem in problems:
            print(f"device wheels: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return fetch(dest, int(args.limit_mib * 2**20))


if __name__ == "__main__":
    sys.exit(main())
