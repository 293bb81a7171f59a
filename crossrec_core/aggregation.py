"""Combining silos' updates of the shared tables (pure functions; the ServerApp calls them).

Silos send *deltas* (their locally trained shared tensors minus the global ones they received) and,
per tensor, a 0/1 mask of the rows they trained. Rules:

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

MASK_SUFFIX = ".rows"


@dataclass(frozen=True)
class SiloUpdate:
    """One silo's reply: deltas of the shared tensors, the rows it trained, its example count."""

    deltas: Mapping[str, np.ndarray]
    rows: Mapping[str, np.ndarray]  # per tensor name, [num_rows] 0/1 (uint8 or bool)
    num_examples: int


def aggregate(
    global_state: Mapping[str, np.ndarray], updates: Sequence[SiloUpdate], *, rule: str
) -> dict[str, np.ndarray]:
    """The new global shared tensors after applying ``updates`` by ``rule``."""
    if not updates:
        raise ValueError("no updates to aggregate")
    if rule not in ("sum", "fedavg", "row-mean"):
        raise ValueError(f"unknown aggregation rule {rule!r}")
    weights = np.asarray([u.num_examples for u in updates], dtype=np.float64)
    if rule == "fedavg" and weights.sum() <= 0:
        raise ValueError("fedavg needs a positive number of examples")
    new_state: dict[str, np.ndarray] = {}
    for name, current in global_state.items():
        step = np.zeros(current.shape, dtype=np.float64)
        counts = np.zeros(current.shape[0], dtype=np.float64)
        for u, w in zip(updates, weights):
            delta = np.asarray(u.deltas[name])
            if delta.shape != current.shape:
                raise ValueError(f"{name}: delta of shape {delta.shape} does not match {current.shape}")
            if rule == "sum":
                step += delta
            elif rule == "fedavg":
                step += (w / weights.sum()) * delta
            else:
                mask = np.asarray(u.rows[name], dtype=bool)
                if mask.shape != current.shape[:1]:
                    raise ValueError(f"{name}: row mask of shape {mask.shape} does not match {current.shape[:1]}")
                step[mask] += delta[mask]
                counts += mask
        if rule == "row-mean":
            step /= np.maximum(counts, 1.0).reshape((-1,) + (1,) * (current.ndim - 1))
        new_state[name] = (current + step).astype(current.dtype)
    return new_state
