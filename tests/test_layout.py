"""The folders depend one way: each imports only the folders below it, with no cycle.

    models      <- adapters <- training, service, deploy <- load_tests
    (tests may import anything)

`models/` imports no BentoML, HTTP or file-format code, and neither it nor
`service/` nor `adapters/` imports TensorFlow directly (the same `.keras`
model serves on any Keras backend). No file edits `sys.path`: scripts run as
modules (`python -m load_tests.bench`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "adapters", "training", "service", "deploy", "load_tests")
MAY_IMPORT = {
    "models": set(),
    "adapters": {"models"},
    "training": {"models", "adapters"},
    "service": {"models", "adapters"},
    "deploy": {"models", "adapters"},
    "load_tests": {"models", "adapters", "deploy"},
}
NEVER = {
    "models": {"bentoml", "PIL", "starlette", "aiohttp", "httpx", "tensorflow", "h5py"},
    "adapters": {"tensorflow", "starlette", "aiohttp"},
    "service": {"tensorflow"},
}


def _imports(folder: str) -> dict[str, set[str]]:
    """{top-level module imported: the files importing it} for every file of `folder`."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_imports_only_the_folders_below_it(folder):
    imported = _imports(folder)
    wrong = {name: files for name, files in imported.items()
             if name in FOLDERS and name != folder and name not in MAY_IMPORT[folder]}  # fmt: skip
    assert not wrong, f"{folder}/ imports {wrong}"
    banned = {name: files for name, files in imported.items() if name in NEVER.get(folder, ())}
    assert not banned, f"{folder}/ imports {banned}"


def test_the_allowed_imports_have_no_cycle():
    def below(folder: str, seen: tuple[str, ...]) -> None:
        for other in MAY_IMPORT[folder]:
            assert other not in seen, f"cycle: {' -> '.join((*seen, other))}"
            below(other, (*seen, other))

    for folder in FOLDERS:
        below(folder, (folder,))


def test_no_file_edits_sys_path():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in (*FOLDERS, "tests")
        for path in (ROOT / folder).rglob("*.py")
        if "sys.path." in path.read_text() and path != Path(__file__)
    ]
    assert not offenders
