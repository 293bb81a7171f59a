"""Probe: private transfer through shopper *segments* released by randomized response.

    python simulations/probe_segments.py [--epsilons 8,2] [--segments 8,16] [-c key=value ...]

Every step that touches shoppers' data is differentially private at the shopper level, and every ε
comes from the accountant (Gaussian steps, RDP) plus the randomized response's exact ε:

Each source silo (every silo but the target), with budget ε:
  1. picks its ``--top-items`` most popular items by a Gaussian histogram (each shopper's item set
     scaled to unit L2 norm: sensitivity 1);
  2. makes each shopper's profile: their items among those, as a unit vector (none: segment "other");
  3. clusters the profiles with DP k-means (``--kmeans-iters`` Lloyd steps, each a Gaussian release of
     the per-cluster sums and counts: sensitivity sqrt 2; starting centroids: the top items);
  4. releases each shopper's nearest-centroid segment by K-ary randomized response. A value is released
     for every shopper of the federation (a shopper the silo does not have is in segment "other" and is
     randomized the same way), so the release does not reveal who shops there.
  Steps 1 and 3 spend ``--gaussian-share`` of ε (composed by the RDP accountant at δ), step 4 the rest
  (pure ε, added).

The target, with budget ε, releases one Gaussian count table from its own shoppers' training items:
item popularity and, per source, the items of each released segment (each shopper's item set scaled to
unit norm in each part: sensitivity sqrt(1 + sources)). A shopper's score for item j is the naive-Bayes
log-lift: log p(j) + sum over sources of [log P_s(j | segment) - log p(j)], with P_s smoothed toward
popularity by ``beta`` pseudo-counts.

Prints validation NDCG@10 (sampled, the run's 99 negatives) of the target's cold-start and all shoppers,
next to popularity, without noise (the same pipeline, exact), and with DP at each ε. Test items are not
used.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crossrec_core.config import PROJECT_ROOT, load_config, parse_override  # noqa: E402
from crossrec_core.evaluation import NDCG, FunctionScorer, PopularityScorer, evaluate  # noqa: E402
from crossrec_core.privacy import epsilon_of  # noqa: E402
from crossrec_core.scenario import build_scenario, resolve_data_dir  # noqa: E402
from crossrec_core.splits import derive_rng  # noqa: E402
from crossrec_core.training import calibrate_noise  # noqa: E402


def item_sets(split) -> list[np.ndarray]:
    """Per shopper (local index), the distinct training items."""
    return [np.unique(items) for items in split.train_items_of()]


def unit_histogram(sets: list[np.ndarray], num_items: int) -> np.ndarray:
    """Sum over shoppers of their item set as a unit vector (each shopper adds at most norm 1)."""
    hist = np.zeros(num_items)
    for items in sets:
        if len(items):
            hist[items] += 1.0 / math.sqrt(len(items))
    return hist


def source_segments(split, *, k: int, top: int, iters: int, sigma: float | None, eps_rr: float | None, rng):
    """Segments (0..k-1; k-1 = "other") of the source's shoppers, before randomized response, and
    after it (None: no DP)."""
    sets = item_sets(split)
    hist = unit_histogram(sets, split.num_items)
    if sigma is not None:
        hist = hist + rng.normal(0.0, sigma, len(hist))
    top_items = np.argsort(-hist)[:top]
    position = np.full(split.num_items, -1)
    position[top_items] = np.arange(top)
    profiles = np.zeros((len(sets), top), dtype=np.float32)
    for u, items in enumerate(sets):
        hit = position[items]
        hit = hit[hit >= 0]
        if len(hit):
            profiles[u, hit] = 1.0 / math.sqrt(len(hit))
    has = profiles.any(axis=1)
    clusters = k - 1
    centroids = np.eye(top, dtype=np.float32)[:clusters]  # the top items (already private)
    for _ in range(iters):
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        assign = np.argmax(profiles @ (centroids / np.maximum(norms, 1e-12)).T, axis=1)
        sums = np.zeros((clusters, top))
        np.add.at(sums, assign[has], profiles[has])
        counts = np.bincount(assign[has], minlength=clusters).astype(float)
        if sigma is not None:
            # (sums, counts) of one shopper change by at most norm sqrt(2): noise std sigma * sqrt(2)
            sums += rng.normal(0.0, sigma * math.sqrt(2), sums.shape)
            counts += rng.normal(0.0, sigma * math.sqrt(2), counts.shape)
        fresh = (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)
        keep = np.linalg.norm(fresh, axis=1) > 0
        centroids[keep] = fresh[keep]
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    segment = np.argmax(profiles @ (centroids / np.maximum(norms, 1e-12)).T, axis=1)
    segment[~has] = k - 1
    if eps_rr is None:
        return segment
    return randomized_response(segment, k, eps_rr, rng)


def randomized_response(values: np.ndarray, k: int, eps: float, rng) -> np.ndarray:
    """K-ary randomized response: keep the value with probability e^eps / (e^eps + k - 1), else one of
    the other k - 1 values uniformly (eps-DP for each value)."""
    keep = rng.random(len(values)) < math.exp(eps) / (math.exp(eps) + k - 1)
    other = (values + rng.integers(1, k, len(values))) % k
    return np.where(keep, values, other)


def target_tables(split, segments: list[np.ndarray], k: int, sigma: float | None, rng):
    """Popularity and per-source segment x item count tables from the target's training shoppers."""
    sets = item_sets(split)
    pop = np.zeros(split.num_items)
    tables = [np.zeros((k, split.num_items)) for _ in segments]
    for u, items in enumerate(sets):
        if not len(items):
            continue
        w = 1.0 / math.sqrt(len(items))
        pop[items] += w
        for table, seg in zip(tables, segments):
            table[seg[u], items] += w
    if sigma is not None:
        scale = sigma * math.sqrt(1 + len(segments))  # one shopper: norm sqrt(1 + sources) in all
        pop = pop + rng.normal(0.0, scale, pop.shape)
        # keep only cells clearly above the noise (soft threshold at 2 noise standard deviations):
        # post-processing, and unpopular items do not get random lifts
        tables = [np.maximum(t + rng.normal(0.0, scale, t.shape) - 2 * scale, 0.0) for t in tables]
    return np.maximum(pop, 0.0), tables


def lift_scores(pop, tables, segments, beta: float, lift_items: int = 0):
    p = (pop + 1e-3) / (pop + 1e-3).sum()
    log_p = np.log(p)
    lifts = []
    outside = np.argsort(-pop)[lift_items:] if lift_items else np.array([], dtype=np.int64)
    for table in tables:
        cond = (table + beta * p) / (table.sum(axis=1, keepdims=True) + beta)
        lift = np.log(cond) - log_p
        if len(outside):
            # the other items share one lift: their segment's share of the rest over popularity's
            rest = cond[:, outside].sum(axis=1) / p[outside].sum()
            lift[:, outside] = np.log(rest)[:, None]
        lifts.append(lift)

    def score_all(users):
        out = np.broadcast_to(log_p, (len(users), len(log_p))).copy()
        for lift, seg in zip(lifts, segments):
            out += lift[seg[users]]
        return out

    return FunctionScorer(lambda users, items: np.take_along_axis(score_all(users), items, axis=1), score_all)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", default="8,2")
    parser.add_argument("--segments", default="8,16")
    parser.add_argument("--betas", default="30,100,300")
    parser.add_argument("--top-items", type=int, default=64)
    parser.add_argument("--lift-items", default="0,300", help="lifts only for this many most popular target items (0: all)")
    parser.add_argument("--kmeans-iters", type=int, default=4)
    parser.add_argument("--gaussian-share", type=float, default=0.25)
    parser.add_argument("--no-target-noise", action="store_true",
                        help="diagnostic only: the target's count tables without noise (sources still private)")
    parser.add_argument("--repeats", type=int, default=1, help="DP draws per setting (different noise)")
    parser.add_argument("-c", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = resolve_data_dir(load_config(dict(parse_override(o) for o in args.overrides)), PROJECT_ROOT)
    start = time.perf_counter()
    scenario = build_scenario(config)
    target = scenario.target
    sources = [s for s in config.silo_names if s != config.target]
    negatives = scenario.negatives(config.target)
    groups = scenario.groups()

    def val(scorer) -> str:
        return " / ".join(f"{evaluate(scorer, target, negatives, u, stage='val', full=False).metrics[NDCG]:.4f}"
                          for u in groups.values())

    print(f"target {config.target}, sources {', '.join(sources)}; validation NDCG@10 (cold-start / all); "
          f"scenario {time.perf_counter() - start:.0f} s\n")
    print(f"popularity: {val(PopularityScorer(target))}\n")
    print("| segments K | ε per silo | β | sources: σ (Gaussian), ε randomized response | target σ | cold / all |")
    print("|---|---|---|---|---|---|")
    index = {name: {uid: i for i, uid in enumerate(scenario.splits[name].user_ids)} for name in sources}
    for k in [int(x) for x in args.segments.split(",")]:
        for eps in [None] + [float(e) for e in args.epsilons.split(",")]:
            for rep in range(args.repeats if eps is not None else 1):
                rng = derive_rng(config.seed, "probe-segments", str(k), str(eps), str(rep))
                if eps is None:
                    sigma_src = eps_rr = sigma_tgt = None
                else:
                    eps_g = args.gaussian_share * eps
                    sigma_src = calibrate_noise(epsilon=eps_g, delta=config.delta, sample_rate=1.0, steps=1 + args.kmeans_iters)
                    spent_g = epsilon_of([(sigma_src, 1.0, 1 + args.kmeans_iters)], config.delta)
                    eps_rr = eps - spent_g
                    sigma_tgt = None if args.no_target_noise else calibrate_noise(
                        epsilon=eps, delta=config.delta, sample_rate=1.0, steps=1)
                # each source's segment for every target shopper: its own (randomized) or a uniform draw
                seg_for_target = []
                for name in sources:
                    seg = source_segments(scenario.splits[name], k=k, top=args.top_items, iters=args.kmeans_iters,
                                          sigma=sigma_src, eps_rr=eps_rr, rng=rng)
                    pos = np.array([index[name].get(uid, -1) for uid in target.user_ids])
                    # a shopper the source does not have is in segment "other", randomized like any other
                    # value: adding or removing a shopper changes one released value's distribution by at
                    # most e^eps, and the release does not reveal who shops there
                    out = np.full(len(pos), k - 1)
                    if eps is not None:
                        out = randomized_response(out, k, eps_rr, rng)
                    out[pos >= 0] = seg[pos[pos >= 0]]
                    seg_for_target.append(out)
                pop, tables = target_tables(target, seg_for_target, k, sigma_tgt, rng)
                if sigma_tgt is not None:
                    print(f"| {k} | {eps:g} | (noisy popularity alone) | | {sigma_tgt:.2f} | {val(lift_scores(pop, [], [], 1.0))} |")
                for beta, lift_items in [(float(b), int(n)) for b in args.betas.split(",") for n in args.lift_items.split(",")]:
                    label = "no DP" if eps is None else f"{eps:g}"
                    noise = "-" if eps is None else f"{sigma_src:.2f}, {eps_rr:.2f}"
                    tgt = "-" if sigma_tgt is None else f"{sigma_tgt:.2f}"
                    print(f"| {k} | {label} | {beta:g} | {noise} | {tgt} | {val(lift_scores(pop, tables, seg_for_target, beta, lift_items))} | lift items {lift_items or 'all'} |",
                          flush=True)


if __name__ == "__main__":
    main()
