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

def tree_memory(root):
    """(RSS, PSS) sums in bytes over root and all its descendants, read from /proc. RSS counts a page
    shared by several processes (Ray's object store, copy-on-write) once per process; PSS splits it
    among them, so the PSS sum is the memory the processes hold together."""
    children, session = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                parts = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(parts[1]), []).append(int(pid))
            session[int(pid)] = int(parts[3])
        except OSError:
            continue
    tree, stack = set(), [root]
    while stack:
        pid = stack.pop()
        tree.add(pid)
        stack.extend(children.get(pid, []))
    # Flower's helpers and Ray's workers open their own sessions and may outlive their parents
    own = os.getsid(0)
    sessions = {session[p] for p in tree if p in session} - {own}
    tree |= {p for p, s in session.items() if s in sessions}
    rss = pss = 0
    by_process = []
    for pid in tree:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                p_pss = 0
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        p_pss = int(line.split()[1]) * 1024
                pss += p_pss
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            by_process.append((p_pss, pid, cmd))
        except OSError:
            pass
    return rss, pss, sorted(by_process, reverse=True)

start = time.time()
proc = subprocess.Popen([sys.executable, "-m", "server.simulate", "--quiet", *sys.argv[1:]])
peak_rss = peak_pss = 0
at_peak = []
while proc.poll() is None:
    rss, pss, by_process = tree_memory(proc.pid)
    if pss > peak_pss:
        at_peak = by_process
    peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
    time.sleep(0.5)
print(f"exit {proc.returncode}; wall {time.time() - start:.1f} s; peak memory of all processes: "
      f"PSS {peak_pss / 1024**3:.2f} GB (RSS sum {peak_rss / 1024**3:.2f} GB)")
print("largest processes at the PSS peak:")
for p_pss, pid, cmd in at_peak[:6]:
    print(f"  {p_pss / 1024**3:.2f} GB  {pid}  {cmd[:110]}")
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
    for s in (l for l in lines if "silos_ok" in l and l.get("phase") == "release"):
        silos = [l for l in lines if l.get("phase") == "release" and l.get("status") == "ok"]
        fit = [l for l in lines if l.get("phase") == "segments" and l.get("status") == "ok"]
        print(f"| release | release | {s['seconds']:.1f} | {max(l['release-seconds'] for l in silos):.1f} (release) "
              f"| {s['seconds'] - max(l['release-seconds'] for l in silos):.1f} | 0 / {silos[0]['bytes_up'] / 1e6:.2f} |")
        for l in fit:
            print(f"| fit | segments ({l['silo']}) | | {l['fit-seconds']:.1f} (fit) | | {l['bytes_down'] / 1e6:.2f} / 0 |")
    for s in (l for l in lines if "silos_ok" in l and "round" in l):
        silos = [l for l in lines if l.get("round") == s["round"] and l.get("phase") == s["phase"] and l.get("status") == "ok"]
        slow = max(silos, key=lambda l: l["round-seconds"])
        down = silos[0]["bytes_down"] / 1e6; up = silos[0]["bytes_up"] / 1e6
        print(f"| {s['round']} | {s['phase']} | {s['seconds']:.1f} | {slow['round-seconds']:.1f} ({slow['train-seconds']:.1f}) "
              f"| {s['seconds'] - slow['round-seconds']:.1f} | {down:.1f} / {up:.1f} |")
PYCODE
