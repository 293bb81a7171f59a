"""Segment transfer in one process (no Flower): the sources' releases and the target's segment model
exactly as the main job's DP run makes them, for several budgets and without noise.

    python simulations/segment_transfer.py [--epsilons none,8,4,2,1] [--repeats 1] [-c key=value ...]

For each ε (``none``: the same pipeline without any noise, a reference only) it prints the target's
NDCG@10 (sampled) on validation and test items for cold-start and all shoppers, the mixing weight
chosen on validation, and popularity's figures. The mixing weight is chosen on validation items only;
test items are evaluated once per setting. ``--repeats`` draws the noise again (different seeds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crossrec_core.config import PROJECT_ROOT, load_config, parse_override  # noqa: E402
from crossrec_core.evaluation import NDCG, PopularityScorer, evaluate  # noqa: E402
from crossrec_core.scenario import build_scenario, resolve_data_dir  # noqa: E402
from crossrec_core.segments import fit_segment_model, has_history, plan_segments, release, target_features  # noqa: E402
from crossrec_core.splits import derive_rng  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", default="none,8,4,2,1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("-c", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = resolve_data_dir(load_config(dict(parse_override(o) for o in args.overrides)), PROJECT_ROOT)
    start = time.perf_counter()
    scenario = build_scenario(config)
    target = scenario.target
    negatives = scenario.negatives(config.target)
    groups = scenario.groups()
    sources = config.source_names

    def ndcg(scorer, stage):
        return [evaluate(scorer, target, negatives, users, stage=stage, full=False).metrics[NDCG] for users in groups.values()]

    print(f"target {config.target}, sources {', '.join(sources)}, K = {config.segments}; scenario "
          f"{time.perf_counter() - start:.0f} s\n")
    pop_val, pop_test = ndcg(PopularityScorer(target), "val"), ndcg(PopularityScorer(target), "test")
    print("| ε per source | draw | w without / with history (chosen on val) | val cold / all | test cold / all | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| popularity | | | {pop_val[0]:.4f} / {pop_val[1]:.4f} | {pop_test[0]:.4f} / {pop_test[1]:.4f} | |")
    for label in args.epsilons.split(","):
        eps = None if label.strip() == "none" else float(label)
        for draw in range(1 if eps is None else args.repeats):
            t0 = time.perf_counter()
            plan = plan_segments(epsilon=eps or 8.0, delta=config.delta, segments=config.segments,
                                 top_items=config.segment_top_items, kmeans_iters=config.segment_kmeans_iters,
                                 gaussian_share=config.segment_gaussian_share, accountant=config.accountant)
            releases = {}
            for name in sources:
                rng = None if eps is None else derive_rng(config.seed, "segment-transfer", name, label, str(draw))
                releases[name] = release(scenario.splits[name], scenario.user_rows[name], config.shopper_table_size,
                                         plan, rng)
            features = target_features(releases, scenario.user_rows[config.target], config.segments,
                                       config.shopper_table_size)
            rr = {name: None if eps is None else plan.rr_epsilon for name in sources}
            model, _ = fit_segment_model(target, features, tuple(sources), config.segments, negatives, rr)
            scorer = model.scorer(features, has_history(target))
            val, test = ndcg(scorer, "val"), ndcg(scorer, "test")
            print(f"| {label.strip()} | {draw + 1} | {model.weights[0]:g} / {model.weights[1]:g} | {val[0]:.4f} / {val[1]:.4f} | "
                  f"{test[0]:.4f} / {test[1]:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
