#!/usr/bin/env bash
# A Python virtualenv for rollback-py's pytest suite: maturin (builds the
# package), pytest, mypy (stubtest). Idempotent: a second run installs nothing.
# Writes ROLLBACK_PY_VENV to $ROLLBACK_TESTENV_DIR/python.env.
set -euo pipefail

dir="${ROLLBACK_TESTENV_DIR:-/tmp/rollback-testenv}"
venv="$dir/python/venv"
mkdir -p "$dir/python"

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "python.sh: installing python3 (Debian)"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq python3 python3-venv python3-dev
    python=python3
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "python.sh: $("$python" --version) is too old; rollback-py needs Python >= 3.11" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "python.sh: creating $venv"
    "$python" -m venv "$venv"
fi

# Versions pinned by lower bounds only where they matter: maturin >= 1.9.4
# sets PYO3_BUILD_EXTENSION_MODULE (pyo3 0.30 needs it).
want=("maturin>=1.9.4,<2" "pytest>=8" "mypy>=1.10")
if ! "$venv/bin/python" - "${want[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
import re
for spec in sys.argv[1:]:
    name = re.split(r"[<>=]", spec, 1)[0]
    try:
        version(name)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
    echo "python.sh: installing ${want[*]} from PyPI"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${want[@]}"
fi

echo "export ROLLBACK_PY_VENV=$venv" > "$dir/python.env"
echo "python.sh: ready ($("$venv/bin/python" --version), maturin $("$venv/bin/maturin" --version | cut -d' ' -f2))"
