#!/usr/bin/env bash
# Sets up the DeepSparse 1.8.0 venv that bench/inference.py runs as a subprocess.
#
# DeepSparse reached end of life in June 2025; 1.8.0 is its last release with wheels (1.9.0
# is an sdist that refuses to build on purpose). It pins numpy < 2 and an old onnx, which
# cannot share a venv with torch 2.13, so it gets its own. It runs offline once installed.
#
#     bash bench/deepsparse_venv.sh [VENV_DIR]      (default: bench/.venv-deepsparse)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv-deepsparse}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "deepsparse==1.8.0" "numpy<2" "onnx==1.14.1"
"$venv/bin/python" -c "import deepsparse; print('deepsparse', deepsparse.__version__)"
