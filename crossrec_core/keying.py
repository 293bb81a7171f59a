"""Keying shoppers and items into fixed-size shared tables without sharing identifiers.

Each identifier is mapped by HMAC-SHA256 under the federation key (held by the silos, not by the
server) to two rows of a table; a representation is the sum of its two rows. Two ids collide fully
only if both rows coincide, which is rare even when single rows are shared. Shopper and item ids are
hashed in separate namespaces, so the same string never maps alike in both tables.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Namespace = Literal["shopper", "item", "cold-start"]
NUM_HASHES = 2


def hash_ids(
    ids: Iterable[str], *, key: str | bytes, table_size: int, namespace: Namespace
) -> np.ndarray:
    """Rows of each id: an int64 array of shape ``[n, 2]`` with values in ``[0, table_size)``."""
    if table_size < 1:
        raise ValueError(f"table_size must be >= 1, got {table_size}")
    key_bytes = key.encode() if isinstance(key, str) else key
    prefix = namespace.encode() + b"\x00"
    digests = [hmac.new(key_bytes, prefix + str(i).encode(), hashlib.sha256).digest() for i in ids]
    if not digests:
        return np.zeros((0, NUM_HASHES), dtype=np.int64)
    raw = np.frombuffer(b"".join(d[:16] for d in digests), dtype="<u8").reshape(-1, NUM_HASHES)
    return (raw % np.uint64(table_size)).astype(np.int64)


def keyed_uniform(ids: Iterable[str], *, key: str | bytes, namespace: Namespace) -> np.ndarray:
    """A uniform number in [0, 1) per id, fixed by the key: for per-id decisions any silo can repeat."""
    rows = hash_ids(ids, key=key, table_size=2**53, namespace=namespace)
    return rows[:, 0].astype(np.float64) / float(2**53)


@dataclass(frozen=True)
class CollisionReport:
    """How many ids share rows with another id in a table of ``table_size`` rows."""

    num_ids: int
    table_size: int
    share_one_row: float  # fraction of ids with at least one row also used by another id
    share_both_rows: float  # fraction of ids whose two rows are exactly another id's two rows

    def describe(self, what: str) -> str:
        return (
            f"{what}: {self.num_ids:,} ids in {self.table_size:,} rows x {NUM_HASHES} hashes; "
            f"{100 * self.share_both_rows:.4f}% share both rows with another id, "
            f"{100 * self.share_one_row:.2f}% share at least one row"
        )


def collision_report(rows: np.ndarray, table_size: int) -> CollisionReport:
    """Collision rates of distinct ids already hashed into ``rows`` (``[n, 2]``)."""
    n = len(rows)
    if n == 0:
        return CollisionReport(0, table_size, 0.0, 0.0)
    pairs = np.sort(rows, axis=1)
    _, pair_inverse, pair_counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    share_both = pair_counts[pair_inverse.reshape(-1)] > 1
    # Users of each row, counting an id once even if both its hashes hit the same row.
    flat = np.concatenate([pairs[:, 0], np.where(pairs[:, 1] != pairs[:, 0], pairs[:, 1], -1)])
    used = flat[flat >= 0]
    row_ids, row_counts = np.unique(used, return_counts=True)
    crowded = row_ids[row_counts > 1]
    share_one = np.isin(pairs[:, 0], crowded) | np.isin(pairs[:, 1], crowded)
    return CollisionReport(n, table_size, float(share_one.mean()), float(share_both.mean()))
