"""Keep TensorFlow's start-up noise off a CPU-only machine's terminal and service logs.

The `uqserve` command calls `quiet_tensorflow` before anything imports
TensorFlow (`uqserve --verbose` turns it off); `service/__init__.py` calls it
when a BentoML worker first imports the service.

    TF_CPP_MIN_LOG_LEVEL   TensorFlow's C++ log level, default 2 (warnings and
                           info hidden, errors shown); a value the user set
                           wins, and 0 shows everything, start-up lines included.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

# Lines TensorFlow writes while it loads on a machine without a GPU, whatever the log level.
NOISE = (
    "before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cudart_stub.cc",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "rebuild TensorFlow with the appropriate compiler flags",
)


@contextmanager
def _stderr_into(file: IO[bytes]) -> Iterator[None]:
    """Send file descriptor 2 (C++ logs included, not only `sys.stderr`) to `file`."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow(verbose: bool = False) -> None:
    """Import Keras and TensorFlow without TensorFlow's start-up noise on a CPU-only machine.

    TF_CPP_MIN_LOG_LEVEL (TensorFlow's C++ logs: 0 all, 1 no INFO, 2 no WARNING,
    3 no ERROR) defaults to 2, or 0 when `verbose`; a value the user set wins.
    TensorFlow 2.21 prints some lines while loading whatever that level says
    (absl's "before absl::InitializeLog()", oneDNN, "Could not find cuda
    drivers", "failed call to cuInit"), so unless `verbose` or the level is 0,
    the import and the first device listing run with stderr captured and all
    but those lines are written back (everything, if the import fails); and
    TensorFlow's Python logger keeps errors only.
    """
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    if verbose or level == "0":
        return
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # e.g. tf.function retracing notes
    if {"keras", "tensorflow"} & sys.modules.keys():
        return  # too late to catch what TensorFlow printed while loading
    imported = False
    with tempfile.TemporaryFile() as captured:
        try:
            with _stderr_into(captured):
                import keras  # loads TensorFlow when it is the backend

                if keras.backend.backend() == "tensorflow":  # cuInit logs here, once:
                    importlib.import_module("tensorflow").config.list_physical_devices()
            imported = True
        finally:
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not (imported and any(n in line for n in NOISE))]
            sys.stderr.write("".join(kept))
