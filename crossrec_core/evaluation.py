"""The fixed evaluation protocol shared by every method (pure functions).

Sampled: the held-out item is ranked against the shopper's 99 fixed negatives (HR@10, NDCG@10, MRR).
Full: it is ranked against the silo's whole catalogue minus the shopper's training items (and, for
test, minus the validation item) (Recall@10, NDCG@10). Ties are broken uniformly at random *in
expectation*: a positive with ``g`` strictly better and ``t`` equal candidates has a rank uniform on
``g..g+t``, and every metric is its exact expectation over that, so constant scores earn chance level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from crossrec_core.splits import EvalNegatives, SiloSplit

K = 10
Stage = Literal["val", "test"]

# Metric keys, used in every table and record.
HR = "hr@10"
NDCG = "ndcg@10"
MRR = "mrr"
FULL_RECALL = "full_recall@10"
FULL_NDCG = "full_ndcg@10"
METRIC_KEYS = (HR, NDCG, MRR, FULL_RECALL, FULL_NDCG)


def hit_rate(greater: np.ndarray, ties: np.ndarray, k: int = K) -> np.ndarray:
    """Expected HR@k per positive: the share of ranks in ``g..g+t`` that are below ``k``."""
    g, t = np.asarray(greater, dtype=np.float64), np.asarray(ties, dtype=np.float64)
    return np.clip(k - g, 0.0, t + 1.0) / (t + 1.0)


def ndcg(greater: np.ndarray, ties: np.ndarray, k: int = K) -> np.ndarray:
    """Expected NDCG@k per positive (one relevant item: ``1 / log2(rank + 2)`` when rank < k)."""
    g, t = np.asarray(greater, dtype=np.float64), np.asarray(ties, dtype=np.float64)
    ranks = np.arange(k, dtype=np.float64)
    gains = 1.0 / np.log2(ranks + 2.0)
    inside = (ranks[None, :] >= g[:, None]) & (ranks[None, :] <= (g + t)[:, None])
    return (inside * gains[None, :]).sum(axis=1) / (t + 1.0)


def reciprocal_rank(greater: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Expected reciprocal rank per positive: ``mean(1/(r+1) for r in g..g+t) = (H(g+t+1) - H(g))/(t+1)``."""
    g = torch.as_tensor(np.asarray(greater, dtype=np.float64))
    t = torch.as_tensor(np.asarray(ties, dtype=np.float64))
    # Harmonic number H(n) = digamma(n + 1) + Euler's constant; the constant cancels.
    total = torch.special.digamma(g + t + 2.0) - torch.special.digamma(g + 1.0)
    return (total / (t + 1.0)).numpy()


def rank_counts(pos_scores: np.ndarray, cand_scores: np.ndarray, valid: np.ndarray | None = None):
    """(# candidates scoring strictly higher, # scoring equal) per row; ``valid`` masks candidates."""
    pos = pos_scores[:, None]
    better = cand_scores > pos
    equal = cand_scores == pos
    if valid is not None:
        better &= valid
        equal &= valid
    return better.sum(axis=1), equal.sum(axis=1)


class Scorer:
    """What a method must provide to be evaluated: scores of (shopper, item) pairs of one silo."""

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``users [B]``, ``items [B, C]`` (local indices) -> scores ``[B, C]``."""
        raise NotImplementedError

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """``users [B]`` -> scores over the whole catalogue ``[B, I]``."""
        raise NotImplementedError


@dataclass(frozen=True)
class EvalResult:
    """Mean metrics over a group of shoppers, and the group's size."""

    metrics: dict[str, float]
    num_users: int


def evaluate(
    scorer: Scorer,
    split: SiloSplit,
    negatives: EvalNegatives,
    users: np.ndarray,
    *,
    stage: Stage = "test",
    full: bool = True,
    batch_size: int = 1024,
) -> EvalResult:
    """Mean sampled (and full-ranking) metrics of ``scorer`` over the shoppers ``users``."""
    users = np.asarray(users, dtype=np.int64)
    if len(users) == 0:
        return EvalResult({k: float("nan") for k in METRIC_KEYS}, 0)
    positives = split.val_item if stage == "val" else split.test_item
    negs = negatives.val if stage == "val" else negatives.test
    sums = dict.fromkeys(METRIC_KEYS if full else (HR, NDCG, MRR), 0.0)
    train_items = split.train_items_of() if full else None
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        cand = np.concatenate([positives[batch][:, None], negs[batch]], axis=1)
        scores = np.asarray(scorer.score(batch, cand), dtype=np.float64)
        g, t = rank_counts(scores[:, 0], scores[:, 1:])
        sums[HR] += hit_rate(g, t).sum()
        sums[NDCG] += ndcg(g, t).sum()
        sums[MRR] += reciprocal_rank(g, t).sum()
        if full:
            all_scores = np.asarray(scorer.score_all(batch), dtype=np.float64)
            valid = np.ones_like(all_scores, dtype=bool)
            for row, u in enumerate(batch):
                valid[row, train_items[u]] = False
                if stage == "test":
                    valid[row, split.val_item[u]] = False
            rows = np.arange(len(batch))
            pos = positives[batch]
            valid[rows, pos] = False  # the positive is not its own competitor
            g, t = rank_counts(all_scores[rows, pos], all_scores, valid)
            sums[FULL_RECALL] += hit_rate(g, t).sum()
            sums[FULL_NDCG] += ndcg(g, t).sum()
    return EvalResult({k: float(v / len(users)) for k, v in sums.items()}, len(users))


class PopularityScorer(Scorer):
    """Items scored by their training-interaction count in the silo (the same for every shopper)."""

    def __init__(self, split: SiloSplit) -> None:
        self.counts = np.bincount(split.train_item, minlength=split.num_items).astype(np.float64)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.counts[items]

    def score_all(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))


class FunctionScorer(Scorer):
    """A scorer from two callables (handy for models that compute scores in torch)."""

    def __init__(
        self,
        score: Callable[[np.ndarray, np.ndarray], np.ndarray],
        score_all: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self._score, self._score_all = score, score_all

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self._score(users, items)

    def score_all(self, users: np.ndarray) -> np.ndarray:
        return self._score_all(users)


class ModelScorer(Scorer):
    """Scores of a CrossRecModel for one silo, with its shoppers' and catalogue's hashed rows."""

    def __init__(self, model, silo: str, user_rows: np.ndarray, catalogue_rows: np.ndarray) -> None:
        was_training = model.training
        model.eval()
        self.users = model.user_vectors(torch.as_tensor(user_rows), silo)
        self.items, self.bias = model.item_vectors(torch.as_tensor(catalogue_rows), silo)
        model.train(was_training)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        u = self.users[torch.as_tensor(users)]
        idx = torch.as_tensor(items)
        return (torch.einsum("bd,bcd->bc", u, self.items[idx]) + self.bias[idx]).numpy()

    def score_all(self, users: np.ndarray) -> np.ndarray:
        return (self.users[torch.as_tensor(users)] @ self.items.T + self.bias[None, :]).numpy()
