"""Leave-one-out splits, the data-poor target scenario and the shared evaluation negatives.

Per silo and shopper, ordered by the order column: last interaction = test, the one before =
validation, the rest = training. The target silo is made data-poor the way a new category is: a
fraction of its shoppers who also shop in a source silo become cold-start shoppers, whose training
history in the target is withheld (their validation and test items stay, for evaluation only).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, replace

import numpy as np

from crossrec_core.data import SiloData
from crossrec_core.errors import DataValidationError
from crossrec_core.keying import keyed_uniform

logger = logging.getLogger(__name__)


def derive_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator fixed by the run seed and a path of names (silo, purpose): no hidden global state."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


@dataclass(frozen=True)
class SiloSplit:
    """A silo's leave-one-out split with local indices (shoppers ``0..U-1``, items ``0..I-1``).

    ``train_*`` hold the training interactions in order; ``*_row`` are row indices into the SiloData
    the split came from, so it can be checked that no held-out row reaches training.
    """

    name: str
    user_ids: np.ndarray  # [U] str, sorted
    item_ids: np.ndarray  # [I] str, the silo's catalogue, sorted
    train_user: np.ndarray  # [N] int64
    train_item: np.ndarray  # [N] int64
    train_weight: np.ndarray  # [N] float32
    train_row: np.ndarray  # [N] int64
    val_item: np.ndarray  # [U] int64
    val_row: np.ndarray  # [U] int64
    test_item: np.ndarray  # [U] int64
    test_row: np.ndarray  # [U] int64
    seen_items: tuple[np.ndarray, np.ndarray]  # every (user, item) in the file, withheld rows included
    cold: np.ndarray  # [U] bool: cold-start shoppers (training history withheld)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def train_items_of(self) -> list[np.ndarray]:
        """Per shopper, the local item indices of their training interactions (in order)."""
        bounds = np.searchsorted(self.train_user, np.arange(self.num_users + 1))
        return [self.train_item[bounds[u] : bounds[u + 1]] for u in range(self.num_users)]


def leave_one_out(silo: SiloData) -> SiloSplit:
    """Split a validated silo (rows sorted by shopper then order) by leave-one-out."""
    user_ids, user_idx = np.unique(silo.user_ids, return_inverse=True)
    item_ids, item_idx = np.unique(silo.item_ids, return_inverse=True)
    n = len(silo)
    starts = np.searchsorted(user_idx, np.arange(len(user_ids)))
    ends = np.append(starts[1:], n)
    if np.any(ends - starts < 3):  # load_silo already rejects these, with the lines
        raise ValueError(f"{silo.name}: a shopper has fewer than 3 interactions")
    test_row, val_row = ends - 1, ends - 2
    is_train = np.ones(n, dtype=bool)
    is_train[test_row] = False
    is_train[val_row] = False
    train_row = np.flatnonzero(is_train)
    return SiloSplit(
        name=silo.name,
        user_ids=user_ids,
        item_ids=item_ids,
        train_user=user_idx[train_row].astype(np.int64),
        train_item=item_idx[train_row].astype(np.int64),
        train_weight=silo.weight[train_row],
        train_row=train_row.astype(np.int64),
        val_item=item_idx[val_row].astype(np.int64),
        val_row=val_row.astype(np.int64),
        test_item=item_idx[test_row].astype(np.int64),
        test_row=test_row.astype(np.int64),
        seen_items=(user_idx.astype(np.int64), item_idx.astype(np.int64)),
        cold=np.zeros(len(user_ids), dtype=bool),
    )


def select_cold_start(
    target: SiloSplit, source_user_ids: set[str], *, fraction: float, key: str, seed: int
) -> np.ndarray:
    """Boolean mask over the target's shoppers: ``round(fraction * m)`` of the ``m`` shoppers who also
    shop in a source silo, chosen by a keyed hash (any silo holding the key picks the same ones)."""
    overlap = np.fromiter((u in source_user_ids for u in target.user_ids), dtype=bool, count=target.num_users)
    candidates = np.flatnonzero(overlap)
    k = int(round(fraction * len(candidates)))
    draw = keyed_uniform(target.user_ids[candidates], key=f"{key}/{seed}", namespace="cold-start")
    chosen = candidates[np.argsort(draw, kind="stable")[:k]]
    mask = np.zeros(target.num_users, dtype=bool)
    mask[chosen] = True
    return mask


def withhold(split: SiloSplit, cold: np.ndarray) -> SiloSplit:
    """The split with the training rows of ``cold`` shoppers removed (held-out rows untouched)."""
    keep = ~cold[split.train_user]
    return replace(
        split,
        train_user=split.train_user[keep],
        train_item=split.train_item[keep],
        train_weight=split.train_weight[keep],
        train_row=split.train_row[keep],
        cold=cold.copy(),
    )


class TooFewNegativesError(DataValidationError, ValueError):
    """A silo's catalogue is too small for the configured number of evaluation negatives."""


@dataclass(frozen=True)
class EvalNegatives:
    """Per shopper, ``k`` distinct items they never interacted with, for validation and for test."""

    val: np.ndarray  # [U, k] int64
    test: np.ndarray  # [U, k] int64


def sample_negatives(split: SiloSplit, *, k: int, seed: int) -> EvalNegatives:
    """Draw the evaluation negatives once from ``seed`` and the silo name; every method reuses them.

    Negatives exclude every item the shopper has in the file (withheld training rows included).
    """
    rng = derive_rng(seed, split.name, "eval-negatives")
    num_items = split.num_items
    users, items = split.seen_items
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(split.num_users + 1))
    seen_sorted = items[order]
    out = np.empty((2, split.num_users, k), dtype=np.int64)
    for u in range(split.num_users):
        seen = np.unique(seen_sorted[bounds[u] : bounds[u + 1]])
        if num_items - len(seen) < k:
            raise TooFewNegativesError(
                f"{split.name}: catalogue too small for {k} evaluation negatives ('eval-negatives')",
                [
                    f"shopper {str(split.user_ids[u])!r} has only {num_items - len(seen)} unseen items of "
                    f"{num_items}, fewer than the {k} evaluation negatives asked for; "
                    "add items to the silo or lower 'eval-negatives'"
                ],
            )
        for s in range(2):
            picked: list[int] = []
            taken = set(seen.tolist())
            while len(picked) < k:
                for x in rng.integers(0, num_items, size=2 * k).tolist():
                    if x not in taken:
                        taken.add(x)
                        picked.append(x)
                        if len(picked) == k:
                            break
            out[s, u] = picked
    return EvalNegatives(val=out[0], test=out[1])
