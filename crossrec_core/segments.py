"""Segment transfer: what a source silo tells the target about each shopper is one segment out of K,
released once with randomized response; the target learns what each released segment buys in its
catalogue from its own shoppers.

Source silo (privacy unit: the shopper; every step below is a DP mechanism in the silo's ledger):
  1. a Gaussian histogram of its items (each shopper's item set as a unit vector: sensitivity 1)
     picks the ``segment-top-items`` most popular items;
  2. each shopper's profile is their items among those, as a unit vector;
  3. DP k-means (``segment-kmeans-iters`` Lloyd steps, each a Gaussian release of the clusters' sums
     and counts: sensitivity sqrt 2, so noise sqrt 2 σ) finds K - 2 segment centres, starting from
     the top items (already private); a shopper's value is the nearest centre (ties, e.g. no top
     item in common with any centre, go to the first), or K - 2 ("member")
     if they have none of the top items. With K = 2 steps 1-3 are skipped: the value is membership
     (K - 2 = 0) against "none";
  4. one value per row of the shared shopper table (the row of the shopper's first keyed hash) is
     released by K-ary randomized response: a row no shopper of the silo hashes to holds "none" and is
     randomized the same way, so who shops at the silo is protected exactly as much as the rest, by
     ε: no more. At ε = 8 the true value is kept with probability 0.9997 (K = 2), so anyone holding the
     federation key (every silo) reads membership almost exactly; at ε = 2 with probability 0.88. When several shoppers
     hash to one row, the one with the smallest second hash row is used (a rule that ignores their
     data); each shopper changes at most one released value.
  Steps 1 and 3 are ``1 + segment-kmeans-iters`` Gaussian mechanisms (1 with K = 3, none with K = 2), composed by the accountant at δ
  (``segment-gaussian-share`` of the budget); step 4 is pure ε-DP with the rest of the budget. The
  two are added (basic composition).

Target silo: reads each source's value at its shoppers' rows, and from its own training shoppers
counts the items of each released value. A shopper's score for item ``i`` is

    log p(i) + sum over sources s of log((1 - w) + w * P_s(i | value) / p(i))

with p the target's item popularity; for shoppers without history in the target, P_s(i | value) is
the channel-corrected mixture described in ``fit_segment_model``. The mixing weight w is chosen on the target's validation items
(test items are never looked at), once for shoppers without training history in the target (the
cold-start case: the target knows who has none) and once for the others. The target's model is fitted inside the
target silo from its own shoppers and is not released: like the popularity baseline, it is not
covered by the sources' DP guarantee (which protects the sources' shoppers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from crossrec_core.errors import PrivacyError
from crossrec_core.evaluation import NDCG, FunctionScorer, evaluate
from crossrec_core.reporting import write_npz_atomic
from crossrec_core.splits import EvalNegatives, SiloSplit

MIX_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # w = 0 is popularity; ratios > 0, so w = 1 is safe
MIN_SIGNAL = 1e-6  # a channel whose kept and swapped probabilities differ by less carries no information
COLD_GROUP, WARM_GROUP = "without history", "with history"  # the target's shoppers, for the weights


# ---- mechanisms ---------------------------------------------------------------------------------
def keep_probability(choices: int, epsilon: float) -> float:
    """K-ary randomized response's chance of keeping the true value (e^ε / (e^ε + K - 1))."""
    if choices < 2:
        raise ValueError(f"randomized response needs at least 2 choices, got {choices}")
    if not epsilon > 0:
        raise ValueError(f"randomized response needs ε > 0, got {epsilon}")
    return 1.0 / (1.0 + (choices - 1) * math.exp(-epsilon))


def randomized_response(values: np.ndarray, choices: int, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Each value kept with ``keep_probability``, else replaced by one of the other K - 1 uniformly:
    for any two true values the chance of any output differs by a factor of at most e^ε."""
    values = np.asarray(values)
    if values.size and (values.min() < 0 or values.max() >= choices):
        raise ValueError(f"values must be in [0, {choices})")
    keep = rng.random(values.shape) < keep_probability(choices, epsilon)
    other = (values + rng.integers(1, choices, values.shape)) % choices
    return np.where(keep, values, other)


def gaussian(values: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return values + rng.normal(0.0, std, np.shape(values))


# ---- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentPlan:
    """A source silo's release, calibrated once: Gaussian steps at ``noise_multiplier`` (sample rate
    1) spending about ``gaussian_share`` of the budget, randomized response with the rest."""

    segments: int
    top_items: int
    kmeans_iters: int
    noise_multiplier: float
    gaussian_epsilon: float
    rr_epsilon: float

    @property
    def clusters(self) -> int:
        """Segments found by k-means; the other two values are "member, none of the top items" and "none"."""
        return self.segments - 2

    @property
    def gaussian_steps(self) -> int:
        """The histogram and the Lloyd steps; none with K = 2 (the value is membership alone)."""
        if self.clusters == 0:
            return 0
        return 1 + (self.kmeans_iters if self.clusters > 1 else 0)


def plan_segments(*, epsilon: float, delta: float, segments: int, top_items: int, kmeans_iters: int,
                  gaussian_share: float, accountant: str = "rdp") -> SegmentPlan:
    """The noise of the Gaussian steps for ``gaussian_share`` x ``epsilon``, and the randomized
    response's ε: what the accountant says the Gaussian steps spend, subtracted from the budget."""
    from crossrec_core.privacy import epsilon_of
    from crossrec_core.training import calibrate_noise

    if segments < 2:
        raise ValueError(f"segments must be at least 2, got {segments}")
    steps = SegmentPlan(segments, top_items, kmeans_iters, 0.0, 0.0, 0.0).gaussian_steps
    if steps:
        try:
            sigma = calibrate_noise(epsilon=gaussian_share * epsilon, delta=delta, sample_rate=1.0, steps=steps,
                                    accountant=accountant)  # type: ignore[arg-type]
        except (PrivacyError, ArithmeticError) as exc:
            raise PrivacyError(f"segments = {segments}: the {steps} Gaussian steps (histogram, k-means) cannot "
                               f"meet segment-gaussian-share x ε = {gaussian_share * epsilon:g}: {exc}; raise "
                               "segment-gaussian-share, lower segment-kmeans-iters, or use segments = 2 "
                               "(membership alone, no Gaussian step)") from None
        spent = epsilon_of([(sigma, 1.0, steps)], delta, accountant)
    else:
        sigma, spent = 0.0, 0.0
    rr = epsilon - spent
    if rr <= 0:
        raise PrivacyError(f"the Gaussian steps spend ε = {spent:.3f} of the budget {epsilon}: nothing left "
                           "for the randomized response (lower segment-gaussian-share)")
    return SegmentPlan(segments, top_items, kmeans_iters, sigma, spent, rr)


# ---- source side --------------------------------------------------------------------------------
def interaction_matrix(split: SiloSplit) -> sp.csr_matrix:
    """Shoppers x items, 1 where the shopper has the item in training."""
    data = np.ones(len(split.train_user), dtype=np.float32)
    m = sp.csr_matrix((data, (split.train_user, split.train_item)), shape=(split.num_users, split.num_items))
    m.data[:] = 1.0  # repeated interactions count once
    return m


def _unit_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def shopper_segments(split: SiloSplit, plan: SegmentPlan, rng: np.random.Generator | None) -> np.ndarray:
    """Each shopper's value: a k-means segment (0 .. K-3) from DP top items and DP k-means, or K-2
    ("member": none of the top items, or K = 2); K-1 ("none") is for rows without a shopper. ``rng``
    None computes the same without noise (for measurements only)."""
    x = interaction_matrix(split)
    member = plan.segments - 2
    if plan.clusters == 0:
        return np.full(split.num_users, member)
    hist = np.asarray(_unit_rows(x).sum(axis=0)).ravel()
    if rng is not None:
        hist = gaussian(hist, plan.noise_multiplier, rng)
    top = np.argsort(-hist, kind="stable")[: plan.top_items]
    profiles = _unit_rows(x[:, top]).toarray().astype(np.float32)
    has = profiles.any(axis=1)
    clusters = plan.clusters
    centres = np.eye(len(top))[:clusters]
    if len(centres) < clusters:  # fewer top items than clusters: the rest start empty
        centres = np.vstack([centres, np.zeros((clusters - len(centres), len(top)))])

    def nearest(c: np.ndarray) -> np.ndarray:
        return np.argmax(profiles @ (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)).T, axis=1)

    for _ in range(plan.kmeans_iters if clusters > 1 else 0):
        assign = nearest(centres)
        sums = np.zeros((clusters, len(top)))
        np.add.at(sums, assign[has], profiles[has])
        counts = np.bincount(assign[has], minlength=clusters).astype(float)
        if rng is not None:  # one shopper moves (sums, counts) by at most norm sqrt 2
            sums = gaussian(sums, plan.noise_multiplier * math.sqrt(2), rng)
            counts = gaussian(counts, plan.noise_multiplier * math.sqrt(2), rng)
        fresh = sums / np.maximum(counts, 1.0)[:, None]
        moved = np.linalg.norm(fresh, axis=1) > 0
        centres[moved] = fresh[moved]
    segment = nearest(centres)
    segment[~has] = member
    return segment


def table_values(segment: np.ndarray, user_rows: np.ndarray, table_size: int, none: int) -> np.ndarray:
    """One value per shopper-table row: the segment of the shopper whose first keyed row it is (of
    several, the one with the smallest second row), ``none`` where no shopper's row is."""
    if len(segment) != len(user_rows):
        raise ValueError(f"{len(segment)} segments for {len(user_rows)} shoppers")
    values = np.full(table_size, none, dtype=np.int64)
    order = np.lexsort((user_rows[:, 1], user_rows[:, 0]))
    rows = user_rows[order, 0]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    values[rows[first]] = segment[order][first]
    return values


def release(split: SiloSplit, user_rows: np.ndarray, table_size: int, plan: SegmentPlan,
            rng: np.random.Generator | None) -> np.ndarray:
    """The source's release: a uint8 value per shopper-table row (randomized; ``rng`` None: exact)."""
    values = table_values(shopper_segments(split, plan, rng), user_rows, table_size, plan.segments - 1)
    if rng is not None:
        values = randomized_response(values, plan.segments, plan.rr_epsilon, rng)
    return values.astype(np.uint8)


# ---- target side --------------------------------------------------------------------------------
@dataclass
class SegmentModel:
    """The target's model: item log-popularity and, per source and released value, item lifts, mixed
    in with weight ``weights[0]`` for shoppers without training history in the target (cold-start)
    and ``weights[1]`` for the others."""

    log_pop: np.ndarray  # [items]
    ratio: np.ndarray  # [2, sources, K, items] P_s(i | value) / p(i) for shoppers without / with history
    weights: tuple[float, float]
    sources: tuple[str, ...]

    def scorer(self, features: np.ndarray, has_history: np.ndarray, weights: tuple[float, float] | None = None) -> FunctionScorer:
        """Scores of shoppers with released values ``features`` [shoppers, sources] and whether each
        has training history in the target."""
        w_cold, w_warm = self.weights if weights is None else weights
        lifts = [np.log((1.0 - w) + w * self.ratio[g]).astype(np.float32) for g, w in enumerate((w_cold, w_warm))]
        log_pop = self.log_pop.astype(np.float32)

        def score_all(users: np.ndarray) -> np.ndarray:
            out = np.broadcast_to(log_pop, (len(users), len(log_pop))).copy()
            warm = has_history[users]
            for g, mask in enumerate((~warm, warm)):
                if mask.any():
                    for s in range(len(self.sources)):
                        out[mask] += lifts[g][s][features[users[mask], s]]
            return out

        return FunctionScorer(lambda users, items: np.take_along_axis(score_all(users), items, axis=1), score_all)

    def save(self, path: Path) -> None:
        write_npz_atomic(path, {"log_pop": self.log_pop, "ratio": self.ratio, "weights": np.array(self.weights),
                                "sources": np.array(self.sources)})

    @classmethod
    def load(cls, path: Path, *, segments: int, items: int) -> "SegmentModel":
        """The model saved at ``path``; ValueError unless it fits ``segments`` values and ``items`` items."""
        with np.load(path, allow_pickle=False) as z:
            log_pop, ratio, weights, sources = z["log_pop"], z["ratio"], z["weights"], z["sources"]
        sources = tuple(str(s) for s in np.atleast_1d(sources))
        problems = []
        if log_pop.shape != (items,) or log_pop.dtype.kind != "f" or not np.isfinite(log_pop).all():
            problems.append(f"log_pop must be {items} finite numbers (the silo's catalogue)")
        if ratio.shape != (2, len(sources), segments, items) or ratio.dtype.kind != "f" or not (
                np.isfinite(ratio).all() and (ratio > 0).all()):
            problems.append(f"ratio must be positive finite numbers of shape (2, {len(sources)}, {segments}, {items})")
        if weights.shape != (2,) or weights.dtype.kind != "f" or not ((weights >= 0) & (weights <= 1)).all():
            problems.append("weights must be two numbers in [0, 1]")
        if len(set(sources)) != len(sources):
            problems.append(f"sources named twice: {sources}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(log_pop, ratio, (float(weights[0]), float(weights[1])), sources)


def target_features(releases: dict[str, np.ndarray], user_rows: np.ndarray, segments: int,
                    table_size: int | None = None) -> np.ndarray:
    """[shoppers, sources] the value each source released at each target shopper's first row. Each
    release must be one unsigned integer below ``segments`` per shopper-table row (``table_size``)."""
    columns = []
    for name, values in releases.items():
        values = np.asarray(values)
        if values.ndim != 1 or values.dtype.kind != "u" or (values.size and int(values.max()) >= segments):
            raise ValueError(f"release of {name!r}: expected one unsigned integer value in [0, {segments}) per "
                             f"shopper-table row, got {values.dtype} of shape {values.shape}")
        if table_size is not None and values.size != table_size:
            raise ValueError(f"release of {name!r} has {values.size} rows; the shopper table has {table_size}")
        if values.size <= int(user_rows[:, 0].max(initial=0)):
            raise ValueError(f"release of {name!r} has {values.size} rows; the shopper table has more")
        columns.append(values[user_rows[:, 0]].astype(np.int64))
    return np.stack(columns, axis=1) if columns else np.zeros((len(user_rows), 0), dtype=np.int64)


def channel(segments: int, epsilon: float | None) -> np.ndarray:
    """K-ary randomized response as a matrix: [released, true] probabilities (identity without noise)."""
    if epsilon is None:
        return np.eye(segments)
    keep = keep_probability(segments, epsilon)
    m = np.full((segments, segments), (1.0 - keep) / (segments - 1))
    np.fill_diagonal(m, keep)
    return m


def _true_shares(m: np.ndarray, values: np.ndarray, segments: int) -> np.ndarray:
    """The shares of the true values behind released ``values`` (the channel inverted, clipped)."""
    observed = np.bincount(values, minlength=segments) / max(len(values), 1)
    shares = np.clip(np.linalg.solve(m, observed), 1e-6, None)
    return shares / shares.sum()


def _posterior(m: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """[released, true]: P(true | released) under the channel and the true values' shares."""
    joint = m * shares[None, :]
    return joint / joint.sum(axis=1, keepdims=True)


def fit_segment_model(split: SiloSplit, features: np.ndarray, sources: tuple[str, ...], segments: int,
                      negatives: EvalNegatives, rr_epsilons: dict[str, float | None] | None = None,
                      ) -> tuple[SegmentModel, dict[str, dict[float, float]]]:
    """Count each released value's items among the target's training shoppers, then pick the mixing
    weight with the best validation NDCG@10 (sampled), separately for shoppers without training
    history in the target (cold-start) and with. Returns the model and, per group, the validation
    NDCG@10 of every weight tried.

    Shoppers with history are scored with what their released value's shoppers bought. For shoppers
    without history the randomized response is undone with its public channel (``rr_epsilons``: each
    source's randomized-response ε, None for an exact release): the item distribution of every true
    value is recovered from the released ones among shoppers with history (the channel and the true
    values' shares among them, both known or estimated from the released values), then mixed again with
    the posterior of the true value among shoppers *without* history, whose shares are estimated from
    their own released values. The two groups differ (a shopper new to the target but active in a source
    is a member there far more often than the target's regular shoppers), so a released value means more
    for them than the first group's counts say."""
    rr_epsilons = rr_epsilons or {}
    x = interaction_matrix(split)
    pop = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
    p = (pop + 0.1) / (pop + 0.1).sum()
    has_history = np.diff(x.indptr) > 0
    ratio = np.ones((2, len(sources), segments, split.num_items))
    for s, name in enumerate(sources):
        onehot = sp.csr_matrix((np.ones(split.num_users), (np.arange(split.num_users), features[:, s])),
                               shape=(split.num_users, segments))
        counts = np.asarray((onehot.T @ x).todense())  # [K, items]
        cond = (counts + p[None, :]) / (counts.sum(axis=1, keepdims=True) + 1.0)
        ratio[1, s] = cond / p[None, :]
        m = channel(segments, rr_epsilons.get(name))
        if m[0, 0] - m[min(1, segments - 1), 0] < MIN_SIGNAL:  # the values are (almost) pure noise
            ratio[:, s] = 1.0
        elif (~has_history).any() and has_history.any():
            true = np.linalg.solve(_posterior(m, _true_shares(m, features[has_history, s], segments)), cond)
            true = np.clip(true, 0.05 * p[None, :], None)
            true /= true.sum(axis=1, keepdims=True)
            cold = _posterior(m, _true_shares(m, features[~has_history, s], segments)) @ true
            ratio[0, s] = cold / p[None, :]
        else:
            ratio[0, s] = ratio[1, s]
    model = SegmentModel(np.log(p), ratio, (0.0, 0.0), tuple(sources))
    chosen, scores = [], {}
    for group, users in ((COLD_GROUP, np.flatnonzero(~has_history)), (WARM_GROUP, np.flatnonzero(has_history))):
        scores[group] = {}
        for w in MIX_WEIGHTS:
            if len(users):
                scorer = model.scorer(features, has_history, (w, w))
                scores[group][w] = evaluate(scorer, split, negatives, users, stage="val", full=False).metrics[NDCG]
            else:
                scores[group][w] = 0.0
        chosen.append(max(scores[group], key=lambda w: (scores[group][w], -w)))
    model.weights = (chosen[0], chosen[1])
    return model, scores


def has_history(split: SiloSplit) -> np.ndarray:
    """Per shopper, whether they have training interactions in ``split``."""
    return np.bincount(split.train_user, minlength=split.num_users) > 0


RELEASES_FILE = "segment_releases.npz"


def save_releases(folder: Path, releases: dict[str, np.ndarray]) -> Path:
    """Keep the releases the target received (its recommendations need a shopper's values later)."""
    return write_npz_atomic(folder / RELEASES_FILE, releases)


def load_releases(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / RELEASES_FILE, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}
