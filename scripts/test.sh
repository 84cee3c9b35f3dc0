#!/usr/bin/env bash
# Run the test suite: every test under tensorflow, and again under jax and torch those that
# depend on the Keras backend (tests marked backend_independent run once).
#
# Usage: scripts/test.sh [--quick] [pytest args...]
#   --quick                   the model's own tests (layers, fast paths, Keras features,
#                             parity, compat, architecture) under one backend: a few minutes
#   KERAS_MIXER_BACKENDS="jax torch"   pick backends (the first one named runs the
#                             backend-independent tests; default "tensorflow jax torch")
#   KERAS_MIXER_TEST_WORKERS=N         pytest-xdist processes per backend (default 2; 0: none)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
[ -x "$PY" ] || PY=python3

backends=${KERAS_MIXER_BACKENDS:-tensorflow jax torch}
files=()
if [ "${1:-}" = "--quick" ]; then
  shift
  backends=${KERAS_MIXER_BACKENDS:-${KERAS_BACKEND:-jax}}
  backends=${backends%% *}
  files=(tests/test_models.py tests/test_fast.py tests/test_keras_native.py tests/test_parity.py
         tests/test_compat.py tests/test_architecture.py)
fi

workers=${KERAS_MIXER_TEST_WORKERS:-2}
parallel=()
if [ "$workers" -gt 0 ] && "$PY" -c "import xdist" 2>/dev/null; then
  # A module runs whole in one process (its module fixtures are built once).
  parallel=(-n "$workers" --dist loadfile)
fi

status=0
first=1
for backend in $backends; do
  marks="not slow"
  [ $first -eq 1 ] || marks="not slow and not backend_independent"
  first=0
  echo "=== KERAS_BACKEND=$backend (-m \"$marks\")"
  start=$SECONDS
  KERAS_BACKEND=$backend "$PY" -m pytest -q -m "$marks" "${parallel[@]}" "${files[@]}" "$@" || status=1
  echo "=== KERAS_BACKEND=$backend: $((SECONDS - start)) s"
done
exit $status
