#!/usr/bin/env bash
# The one command for the GPU machine: MC dropout's cost and the served throughput on JAX.
#
#   bash load_tests/device_check.sh OUT_DIR [--cpu] [--quick]
#
# With .device/wheels/manifest.json (`python -m load_tests.device_wheels`, run where
# PyPI is reachable) and a Python 3.12, a virtual environment in a temporary folder
# gets those wheels on top of the machine's own packages (its JAX among them);
# otherwise (the CPU dry run here, the test suite), ${PYTHON:-.venv/bin/python}
# runs everything.
# UQSERVE_DEVICE_WHEELS names another wheel folder; DEVICE_PYTHON the machine's
# Python (python3). Runs `python -m load_tests.device_bench --output OUT_DIR ...`
# under `timeout 450` (UQSERVE_DEVICE_TIMEOUT seconds instead when set), its output
# also in OUT_DIR/device_check.log, then prints the JSON summary. Exits with the
# bench's status (124 when it ran out of time).
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: bash load_tests/device_check.sh OUT_DIR [--cpu] [--quick]" >&2
    exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
shift
wheels=${UQSERVE_DEVICE_WHEELS:-$root/.device/wheels}
cd "$root"
export KERAS_BACKEND=jax UQSERVE_KERAS_BACKEND=jax BENTOML_DO_NOT_TRACK=true PYTHONUNBUFFERED=1
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}

# A venv on the machine's Python with the wheels installed; sets `python` to its python.
# The machine's python3 may itself live in a venv, whose packages a new venv's
# --system-site-packages would not see: a .pth file adds them (after the wheels).
install_wheels() {
    local base=${DEVICE_PYTHON:-python3} venv site
    scratch=$(mktemp -d -t uqserve-device-XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    venv=$scratch/venv
    "$base" -m venv --system-site-packages --without-pip "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$base" -c 'import site
print("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in site.getsitepackages()))' \
        >"$site/device-base.pth"
    local files=() listing
    if ! listing=$("$base" -m load_tests.device_wheels --files --dest "$wheels"); then
        echo "device check: cannot read $wheels/manifest.json (see above)" >&2
        exit 1
    fi
    mapfile -t files <<<"$listing"
    if [[ -z $listing ]]; then
        echo "device check: no wheels listed in $wheels/manifest.json" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip install --quiet --no-index --no-deps --no-compile \
        --disable-pip-version-check "${files[@]/#/$wheels/}"
    if ! "$venv/bin/python" -m load_tests.device_wheels --verify --dest "$wheels"; then
        echo "device check: requirements above are not met; going on" >&2
    fi
    python=$venv/bin/python
}

# The wheels are for CPython 3.12 (the GPU machine's); another Python uses its own packages.
if [[ -f $wheels/manifest.json ]] &&
    "${DEVICE_PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    install_wheels
else
    python=${PYTHON:-$root/.venv/bin/python}
fi
echo "device check: $python ($("$python" --version 2>&1)), output in $out" >&2

status=0
timeout --kill-after=30 "${UQSERVE_DEVICE_TIMEOUT:-450}" "$python" -m load_tests.device_bench --output "$out" "$@" 2>&1 |
    tee "$out/device_check.log" || status=$?
if [[ -f $out/device_bench.json ]]; then
    echo "device check: summary (exit $status)"
    "$python" -c 'import json, sys
print(json.dumps(json.load(open(sys.argv[1])).get("summary", "none: the bench stopped early"),
                 indent=2))' "$out/device_bench.json"
fi
exit "$status"
