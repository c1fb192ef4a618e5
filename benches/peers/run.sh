#!/usr/bin/env bash
# Peer figures: the Python library suitkaise (processing module) against the
# Python standard library (multiprocessing). See README.md in this folder.
# Usage: bash benches/peers/run.sh   (from anywhere)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "suitkaise==0.4.14"

# keep the source folder free of __pycache__
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" "$here/peers.py"
