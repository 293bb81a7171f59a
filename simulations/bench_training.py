"""Benchmark: local training speed of one real silo with and without shopper-level DP, and peak memory.

    python simulations/bench_training.py [--silo Toys] [--epochs 1]

Each mode runs in its own child process so that peak RSS is per mode. Prints interactions/s, the
DP slowdown ratio (measured in this one run) and peak memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _run(mode: str, silo: str, epochs: float, queue) -> None:
    import torch

    from crossrec_core.silo import new_model, train_settings
    from crossrec_core.config import PROJECT_ROOT, load_config
    from crossrec_core.scenario import build_scenario, resolve_data_dir
    from crossrec_core.training import DPSettings, calibrate_noise, steps_per_epoch, train

    config = resolve_data_dir(load_config({"target": silo, "silos": silo, "min-silos": 1}), PROJECT_ROOT)
    scenario = build_scenario(config)
    data = scenario.shopper_data(silo)
    settings = train_settings(config, dp=(mode == "dp-large-batch"))
    model = new_model(config, [silo], sparse=(mode == "no-dp-sparse"))
    dp = None
    if mode.startswith("dp"):
        per_epoch = steps_per_epoch(len(data), settings.batch_size)
        sigma = calibrate_noise(epsilon=config.epsilon_budget, delta=config.delta, sample_rate=1 / per_epoch,
                                steps=max(1, round(epochs * per_epoch)))
        dp = DPSettings(sigma, config.max_grad_norm, config.delta)
    report = train(model, data, settings=settings, epochs=epochs, seed=0, dp=dp, progress=False)
    queue.put({
        "mode": mode, "threads": torch.get_num_threads(), "steps": report.steps,
        "interactions": report.interactions, "seconds": round(report.seconds, 2),
        "interactions_per_s": round(report.examples_per_second), "epsilon": report.epsilon,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silo", default="Toys")
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    for mode in ("no-dp-sparse", "no-dp-dense", "dp", "dp-large-batch"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(mode, args.silo, args.epochs, queue))
        start = time.perf_counter()
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"benchmark mode {mode} failed (exit {proc.exitcode})")
        results.append(queue.get(timeout=10))
        results[-1]["process_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=2))
    by_mode = {r["mode"]: r for r in results}
    print(f"\nsilo {args.silo}, {args.epochs} epoch(s); batch-size for all but dp-large-batch (dp-batch-size)")
    print("| mode | steps | interactions/s | peak RSS (GB) |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['mode']} | {r['steps']} | {r['interactions_per_s']:,} | {r['peak_rss_gb']} |")
    dp = by_mode["dp"]["interactions_per_s"]
    print(f"\nDP slowdown vs non-DP (same dense model): {by_mode['no-dp-dense']['interactions_per_s'] / dp:.2f}x; "
          f"vs non-DP with sparse tables: {by_mode['no-dp-sparse']['interactions_per_s'] / dp:.2f}x")


if __name__ == "__main__":
    main()
