"""The GPU machine's check, dry-run here: `load_tests/device_check.sh OUT --cpu --quick`.

The script runs as it would there, but on JAX's CPU backend and this
environment's Python (no wheel folder: UQSERVE_DEVICE_WHEELS names a missing
one), in a subprocess, so the rest of the suite stays on TensorFlow. Its JSON
must hold every configuration of the quick plan, sane probabilities, and a
served run with requests and no failure. The wheel fetcher's pure parts
(closure, manifest, size budget, verification) are tested without a network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests import device_wheels
from load_tests.device_wheels import (
    Package,
    build_manifest,
    closure,
    needed,
    normalize,
    over_budget,
    tree_bytes,
    unmet,
    verify,
    wheel_name,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "load_tests" / "device_check.sh"
needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="JAX is not installed in this environment: the device check runs on Keras' JAX backend",
)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    """The script's CPU dry run (about a minute or two) -> (its process, its JSON)."""
    out = tmp_path_factory.mktemp("device-check")
    env = {**os.environ, "PYTHON": sys.executable, "UQSERVE_DEVICE_WHEELS": str(out / "none")}
    for name in ("PROMETHEUS_MULTIPROC_DIR", "UQSERVE_GPU", "UQSERVE_MODEL"):
        env.pop(name, None)  # the suite's settings, not the served model's
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--cpu", "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    result = out / "device_bench.json"
    assert result.is_file(), f"no JSON; the script printed:\n{done.stdout[-4000:]}{done.stderr}"
    return done, json.loads(result.read_text())


@needs_jax
def test_dry_run_succeeds_and_prints_the_summary(dry_run: tuple) -> None:
    done, result = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "device check: summary (exit 0)" in done.stdout
    assert result["summary"]["served_failures"] == 0
    assert result["served"]["settings"]["UQSERVE_KERAS_BACKEND"] == "jax"
    logs = Path(done.args[2])  # OUT
    for name in ("device_bench.log", "device_check.log", "service.log"):
        assert (logs / name).stat().st_size > 0, name


@needs_jax
def test_every_inprocess_config_is_measured(dry_run: tuple) -> None:
    plan, part = dry_run[1]["plan"], dry_run[1]["inprocess"]
    assert part["skipped"] == [] and part["errors"] == []
    rows = {(r["size"], r["batch"], r["base_dtype"], r["samples"]): r for r in part["rows"]}
    expected = {
        (size, batch, dtype, t)
        for size in plan["sizes"]
        for batch in plan["batches"]
        for dtype in plan["dtypes"]
        for t in plan["samples"]
    }
    assert set(rows) == expected
    for (_, batch, _, t), row in rows.items():
        assert row["deterministic_images_per_s"] > 0 and row["mc_images_per_s"] > 0
        assert row["mc_over_deterministic"] > 0
        assert row["probability_error"] < 1e-3
        assert row["shape"] == {"deterministic": [batch, 10], "mc": [batch, t, 10]}
        assert row["calls"]["deterministic"] >= 3 and row["calls"]["mc"] >= 3


@needs_jax
def test_served_run_answers_every_request(dry_run: tuple) -> None:
    result = dry_run[1]
    served, plan = result["served"], result["plan"]
    assert "error" not in served, served.get("error")
    assert served["failures"] == 0 and served["warmup"]["failures"] == 0, served["errors"]
    assert served["requests"] > 0 and served["images"] == served["requests"] * 2
    assert served["images_per_s"] > 0 and 0 < served["p50_ms"] <= served["p99_ms"]
    assert 1.0 <= served["mean_images_per_batch"] <= plan["max_batch_size"]
    assert served["settings"]["UQSERVE_BASE_DTYPE"] == plan["served_dtype"]
    assert "UQSERVE_GPU" not in served["settings"]  # --cpu


@needs_jax
def test_device_and_targets_are_recorded(dry_run: tuple) -> None:
    result = dry_run[1]
    assert result["device"]["platform"] == "cpu"
    assert result["device"]["versions"]["keras"] == importlib.metadata.version("keras")
    assert result["targets"]["mc_over_deterministic_max"] == 1.05
    assert result["targets"]["served_images_per_s_min"] == 5000.0
    summary = result["summary"]
    assert summary["served_met"] is None  # 32x32, T=5: not the target's conditions
    assert summary["mc_over_deterministic"] == []  # no batch 64 in the quick plan
    assert summary["inprocess_rows"] == len(result["inprocess"]["rows"])


def test_script_without_output_folder_prints_usage() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "usage:" in done.stderr


# The wheel fetcher's pure parts -------------------------------------------------


def test_needed_evaluates_markers_for_the_target() -> None:
    assert needed("PyYAML>=6") == "pyyaml"
    assert needed("typing_extensions>=4.6; python_version < '3.13'") == "typing-extensions"
    assert needed("exceptiongroup; python_version < '3.11'") is None
    assert needed("pywin32; sys_platform == 'win32'") is None
    assert needed("pytest; extra == 'test'") is None
    assert normalize("Zope.Interface_x") == "zope-interface-x"


def test_closure_stops_at_what_the_device_has() -> None:
    graph = {
        "keras": Package("3.15.1", ("numpy", "h5py", "rich; extra == 'dev'")),
        "h5py": Package("3.14.0", ("numpy>=1.19",)),
        "numpy": Package("2.4.6", ("only-through-numpy",)),
        "only-through-numpy": Package("1.0"),
        "bentoml": Package("1.4.40", ("Starlette", "aiohttp", "not-resolved")),
        "starlette": Package("1.10.0", ("anyio<5",)),
        "anyio": Package("4.16.0"),
        "aiohttp": Package("3.14.5", ("yarl",)),
        "yarl": Package("1.25.1"),
    }
    carry, left = closure(["keras", "BentoML"], graph, exclude={"numpy", "aiohttp"})
    assert carry == ["anyio", "bentoml", "h5py", "keras", "starlette"]
    assert left == ["aiohttp", "numpy"]


def test_wheel_name() -> None:
    assert wheel_name("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl") == (
        "pydantic-core",
        "2.50.5",
    )
    with pytest.raises(ValueError, match="expected a wheel file name"):
        wheel_name("pydantic-2.14.4.tar.gz")


def test_over_budget() -> None:
    limit = 64 * 2**20
    assert over_budget(60 * 2**20, 4 * 2**20, limit) is None
    message = over_budget(62 * 2**20, 3 * 2**20, limit)
    assert message is not None
    assert "62.00 MiB" in message and "65.00 MiB" in message and "64.00 MiB" in message


def _wheel(folder: Path, file: str, size: int) -> Path:
    path = folder / file
    path.write_bytes(b"x" * size)
    return path


def test_manifest_lists_sizes_and_digests(tmp_path: Path) -> None:
    _wheel(tmp_path, "keras-3.15.1-py3-none-any.whl", 1000)
    _wheel(tmp_path, "PyYAML-6.0.4-cp312-cp312-manylinux2014_x86_64.whl", 300)
    manifest = build_manifest(tmp_path, {"keras": "3.15.1", "pyyaml": "6.0.4"}, ["numpy"])
    assert [(w["name"], w["version"], w["bytes"]) for w in manifest["wheels"]] == [
        ("keras", "3.15.1", 1000),
        ("pyyaml", "6.0.4", 300),
    ]
    assert manifest["wheels"][0]["sha256"] == hashlib.sha256(b"x" * 1000).hexdigest()
    assert manifest["total_bytes"] == 1300
    assert manifest["left_to_device"] == ["numpy"]
    assert manifest["python_version"] == "3.12"


def test_manifest_refuses_missing_or_doubled_wheels(tmp_path: Path) -> None:
    _wheel(tmp_path, "keras-3.15.1-py3-none-any.whl", 10)
    _wheel(tmp_path, "keras-3.15.0-py3-none-any.whl", 10)
    with pytest.raises(ValueError, match=r"none for \['bentoml'\] and several for \['keras'\]"):
        build_manifest(tmp_path, {"keras": "3.15.1", "bentoml": "1.4.40"}, [])


def test_download_deletes_stale_wheels_first(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(device_wheels, "pip", lambda *arguments: calls.append(arguments))
    keep = _wheel(tmp_path, "keras-3.15.1-py3-none-any.whl", 10)
    old = _wheel(tmp_path, "keras-3.14.0-py3-none-any.whl", 10)
    other = _wheel(tmp_path, "tensorflow-2.21.0-cp312-cp312-manylinux_2_27_x86_64.whl", 10)
    device_wheels.download({"keras": "3.15.1"}, tmp_path)
    assert keep.exists() and not old.exists() and not other.exists()
    (arguments,) = calls
    assert arguments[:2] == ("download", "--no-deps") and arguments[-1] == "keras==3.15.1"
    assert "--only-binary=:all:" in arguments and "3.12" in arguments


def test_tree_bytes_counts_what_travels(tmp_path: Path) -> None:
    def git(*arguments: str) -> None:
        subprocess.run(["git", *arguments], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n")  # 9 bytes, untracked: travels
    (tmp_path / "tracked.txt").write_bytes(b"a" * 100)
    git("add", "tracked.txt")
    (tmp_path / "new.txt").write_bytes(b"b" * 20)
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_bytes(b"c" * 5000)
    assert tree_bytes(tmp_path) == 100 + 20 + 9


def test_verify_reports_missing_and_other_versions() -> None:
    here = importlib.metadata.version("packaging")
    manifest = {
        "wheels": [
            {"name": "packaging", "version": here},
            {"name": "no-such-package-uqserve", "version": "1.0"},
            {"name": "pytest", "version": "0.0.1"},
        ]
    }
    problems = verify(manifest)
    assert "no-such-package-uqserve 1.0 is not installed" in problems
    assert any(p.startswith("pytest is ") and p.endswith("not 0.0.1") for p in problems)
    assert not any(p.startswith("packaging") for p in problems)


def test_unmet_requirements() -> None:
    here = importlib.metadata.version("packaging")
    assert unmet([f"packaging=={here}", "colorama; sys_platform == 'nothing'"]) == []
    assert unmet(["packaging<1", "no-such-package-uqserve>=1"]) == [
        ("packaging<1", f"{here} is installed"),
        ("no-such-package-uqserve>=1", "not installed"),
    ]


def test_files_prints_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wheel = {"name": "keras", "version": "3.15.1", "file": "keras-3.15.1-py3-none-any.whl"}
    (tmp_path / "manifest.json").write_text(json.dumps({"wheels": [wheel]}))
    assert device_wheels.main(["--files", "--dest", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == ["keras-3.15.1-py3-none-any.whl"]
    with pytest.raises(FileNotFoundError, match=r"run `python -m load_tests\.device_wheels"):
        device_wheels.main(["--files", "--dest", str(tmp_path / "none")])


def test_fetch_needs_the_project_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(device_wheels, "environment_pins", lambda: {"keras": "3.15.1"})
    with pytest.raises(RuntimeError, match=r"bentoml not installed in .*device_wheels"):
        device_wheels.fetch(tmp_path, device_wheels.LIMIT_BYTES)
