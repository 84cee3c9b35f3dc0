#!/usr/bin/env bash
# Run the test suite on every Keras backend (jax, tensorflow, torch).
# Usage: scripts/test.sh [pytest args...]   (KERAS_MIXER_BACKENDS="jax torch" to pick)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
[ -x "$PY" ] || PY=python3
status=0
for backend in ${KERAS_MIXER_BACKENDS:-jax tensorflow torch}; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$PY" -m pytest -q -m "not slow" "$@" || status=1
done
exit $status
