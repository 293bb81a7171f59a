#!/usr/bin/env bash
# Benchmark: wall time and peak memory of the main job (all processes: the launcher, the SuperLink,
# the ServerApp and the simulated ClientApps), then per-round figures from the run folder.
# Usage: simulations/bench_federation.sh [--experiment simulations/quick.toml] [-c key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
log=$(mktemp)
"$PY" - "$@" <<'PYCODE' | tee "$log"
import subprocess, sys, threading, time, os

def tree_rss(root):
    """Sum of RSS (bytes) of root and all its descendants, read from /proc."""
    children = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(pid))
        except OSError:
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total

start = time.time()
proc = subprocess.Popen([sys.executable, "-m", "server.simulate", "--quiet", *sys.argv[1:]])
peak = 0
while proc.poll() is None:
    peak = max(peak, tree_rss(proc.pid))
    time.sleep(0.5)
print(f"exit {proc.returncode}; wall {time.time() - start:.1f} s; peak RSS of all processes {peak / 1024**3:.2f} GB")
PYCODE
run=$(grep -o 'run folder: .*' "$log" | tail -1 | cut -d' ' -f3)
"$PY" - "$run" <<'PYCODE'
import json, sys, pathlib
top = pathlib.Path(sys.argv[1])
for run in sorted(top.glob("federated-*")):
    lines = [json.loads(l) for l in (run / "rounds.jsonl").read_text().splitlines()]
    print(f"\n{run.name}")
    print("| round | phase | wall s | slowest silo s (train) | Flower overhead s | MB down / up per silo |")
    print("|---|---|---|---|---|---|")
    for s in (l for l in lines if "silos_ok" in l):
        silos = [l for l in lines if l.get("round") == s["round"] and l.get("phase") == s["phase"] and l.get("status") == "ok"]
        slow = max(silos, key=lambda l: l["round-seconds"])
        down = silos[0]["bytes_down"] / 1e6; up = silos[0]["bytes_up"] / 1e6
        print(f"| {s['round']} | {s['phase']} | {s['seconds']:.1f} | {slow['round-seconds']:.1f} ({slow['train-seconds']:.1f}) "
              f"| {s['seconds'] - slow['round-seconds']:.1f} | {down:.1f} / {up:.1f} |")
PYCODE
