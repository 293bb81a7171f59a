"""Combining silos' updates of the shared tables (pure functions; the ServerApp calls them).

Silos send, per shared tensor, the *deltas* of the rows they trained (their locally trained rows
minus the global ones they received) and the indices of those rows; ``rows=None`` means every row
(DP noise reaches every shopper row, so a DP silo sends the whole shopper table). Rules:

- ``row-mean``: each row moves by the mean delta of the silos that trained it. A row only one silo
  trains gets that silo's full update (no dilution); a row several silos train gets their average.
- ``sum``: each row moves by the sum of the silos' deltas (no dilution, but rows trained by several
  silos move by several updates).
- ``fedavg``: each row moves by the example-weighted mean of *all* silos' deltas, rows they did not
  train counting as zero: the classic rule, which dilutes a row trained by one silo of ``n``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RULES = ("row-mean", "sum", "fedavg")


@dataclass(frozen=True)
class SiloUpdate:
    """One silo's reply: per shared tensor, the trained rows' indices (``None``: all rows) and their
    deltas (``[len(rows), ...]``, or the whole tensor's shape), and the silo's example count."""

    deltas: Mapping[str, np.ndarray]
    rows: Mapping[str, np.ndarray | None]
    num_examples: int

    @classmethod
    def from_dense(cls, deltas: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray | None], num_examples: int):
        """From whole-tensor deltas and 0/1 row masks (``None`` or an all-ones mask: every row)."""
        rows: dict[str, np.ndarray | None] = {}
        values: dict[str, np.ndarray] = {}
        for name, delta in deltas.items():
            mask = masks.get(name)
            if mask is None or bool(np.all(mask)):
                rows[name], values[name] = None, np.asarray(delta)
            else:
                index = np.flatnonzero(np.asarray(mask)).astype(np.int64)
                rows[name], values[name] = index, np.asarray(delta)[index]
        return cls(values, rows, num_examples)


def _checked_rows(name: str, update: SiloUpdate, shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray]:
    if name not in update.deltas:
        raise ValueError(f"{name}: missing from a silo's update")
    delta = np.asarray(update.deltas[name])
    rows = update.rows.get(name)
    if rows is None:
        if delta.shape != shape:
            raise ValueError(f"{name}: delta of shape {delta.shape} does not match {shape}")
        return None, delta
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{name}: row indices must be a 1-d integer array, got {rows.dtype} of shape {rows.shape}")
    if delta.shape != (len(rows), *shape[1:]):
        raise ValueError(f"{name}: delta of shape {delta.shape} does not match {len(rows)} rows of {shape}")
    if len(rows) and (rows.min() < 0 or rows.max() >= shape[0]):
        raise ValueError(f"{name}: row index out of range 0..{shape[0] - 1}")
    if len(np.unique(rows)) != len(rows):
        raise ValueError(f"{name}: repeated row indices")
    return rows, delta


def aggregate(
    global_state: Mapping[str, np.ndarray], updates: Sequence[SiloUpdate], *, rule: str
) -> dict[str, np.ndarray]:
    """The new global shared tensors after applying ``updates`` by ``rule``."""
    if not updates:
        raise ValueError("no updates to aggregate")
    if rule not in RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}")
    weights = np.asarray([u.num_examples for u in updates], dtype=np.float64)
    if rule == "fedavg" and weights.sum() <= 0:
        raise ValueError("fedavg needs a positive number of examples")
    new_state: dict[str, np.ndarray] = {}
    for name, current in global_state.items():
        step = np.zeros(current.shape, dtype=np.float64)
        counts = np.zeros(current.shape[0], dtype=np.float64)
        for u, w in zip(updates, weights):
            rows, delta = _checked_rows(name, u, current.shape)
            scale = w / weights.sum() if rule == "fedavg" else 1.0
            if rows is None:
                step += scale * delta
                counts += 1.0
            else:
                step[rows] += scale * delta
                counts[rows] += 1.0
        if rule == "row-mean":
            step /= np.maximum(counts, 1.0).reshape((-1,) + (1,) * (current.ndim - 1))
        new_state[name] = (current + step).astype(current.dtype)
    return new_state


def apply_update(shared: Mapping[str, np.ndarray], update: SiloUpdate) -> dict[str, np.ndarray]:
    """``shared`` plus one silo's update (e.g. the target's fine-tuned tables)."""
    out = {}
    for name, current in shared.items():
        rows, delta = _checked_rows(name, update, current.shape)
        new = np.array(current, copy=True)
        if rows is None:
            new += delta.astype(new.dtype)
        else:
            new[rows] += delta.astype(new.dtype)
        out[name] = new
    return out
