#!/usr/bin/env bash
# Create ./.venv and install the pinned stack plus r1lab (editable). Idempotent: a second run
# only re-installs when requirements.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.r1lab-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing the pinned stack (torch, open_clip, jupyter, ...) into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q -c requirements.txt -e ".[dev]"
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, open_clip, r1lab; print(f'[setup] ok: torch {torch.__version__}, open_clip {open_clip.__version__}, r1lab {r1lab.__version__}')"
