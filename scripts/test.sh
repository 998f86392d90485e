#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every test: the library tests (with the architecture's
# import-linter contracts), the notebooks under nbval and the browser test; the 15 slowest
# tests are listed at the end. Arguments replace the default paths and go to pytest, e.g.
#   bash scripts/test.sh tests/test_pool.py -x        one file
#   bash scripts/test.sh -m "not slow"                the fast lane (README, "Contributing")
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONHASHSEED=0
# pytest exits 5 when it collected no test: with `set -e` that fails the run, as it should.
if [ "$#" -eq 0 ]; then set -- tests notebooks tests_browser; fi
exec .venv/bin/python -m pytest --nbval-lax -p no:cacheprovider --durations=15 "$@"
