#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every test: the library tests and the notebooks under nbval.
# Extra arguments go to pytest (for example: bash scripts/test.sh tests/test_pool.py -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONHASHSEED=0
# pytest exits 5 when it collected no test: with `set -e` that fails the run, as it should.
exec .venv/bin/python -m pytest --nbval-lax -p no:cacheprovider "$@"
