#!/usr/bin/env bash
# Named experiment: the privacy-utility curve on the bundled data. One main-job run at ε = 8 with the
# baselines and the federation without DP, then the federation with DP at ε = 4, 2 and 1 (no
# baselines: the same splits give the same reference rows), then the table and plot of the target's
# NDCG@10 against ε. About 1-1.5 minutes per DP run (segment transfer) plus 5 for the first on a
# 2-core machine (with private-transfer=dp-sgd: about 7 per DP run plus 12).
# Usage: simulations/privacy_utility.sh [-c key=value ...]   (extra overrides go to every run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
EPSILONS="${EPSILONS:-4 2 1}"
folders=()
run() {
  local out
  out=$("$PY" -m server.simulate --quiet "$@" | tee /dev/stderr | sed -n 's/^run folder: //p' | tail -1)
  [ -n "$out" ] || { echo "privacy_utility: a run did not report its folder" >&2; exit 1; }
  folders+=("$out")
}
run -c epsilon-budget=8 "$@"
for eps in $EPSILONS; do
  run -c epsilon-budget="$eps" --variants dp --no-baselines "$@"
done
"$PY" -m crossrec_core.privacy_utility "${folders[@]}"
