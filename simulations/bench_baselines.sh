#!/usr/bin/env bash
# Benchmark: wall time and peak memory of the baselines command on the bundled data.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
/usr/bin/time -v "$PY" -m crossrec_core.baselines --quiet "$@" 2> >(grep -E "Elapsed|Maximum resident" >&2)
