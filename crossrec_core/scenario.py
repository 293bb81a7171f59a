"""The experiment's data side, built once from a RunConfig: every silo's split, the data-poor target,
the shared evaluation negatives and the keyed table rows of shoppers and catalogue items."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossrec_core.config import RunConfig
from crossrec_core.data import load_silo, silo_path
from crossrec_core.keying import CollisionReport, collision_report, hash_ids
from crossrec_core.splits import (
    EvalNegatives,
    SiloSplit,
    leave_one_out,
    sample_negatives,
    select_cold_start,
    withhold,
)
from crossrec_core.training import ShopperData

logger = logging.getLogger(__name__)

COLD = "cold-start"
ALL = "all"


@dataclass
class Scenario:
    """Splits of every silo (the target's with cold-start shoppers withheld) and what evaluation needs."""

    config: RunConfig
    splits: dict[str, SiloSplit]
    user_rows: dict[str, np.ndarray]
    catalogue_rows: dict[str, np.ndarray]
    collisions: dict[str, CollisionReport]
    _negatives: dict[str, EvalNegatives] = field(default_factory=dict)

    @property
    def target(self) -> SiloSplit:
        return self.splits[self.config.target]

    def negatives(self, silo: str) -> EvalNegatives:
        """The silo's evaluation negatives, drawn once from the run seed and reused by every method."""
        if silo not in self._negatives:
            self._negatives[silo] = sample_negatives(
                self.splits[silo], k=self.config.eval_negatives, seed=self.config.seed
            )
        return self._negatives[silo]

    def groups(self, silo: str | None = None) -> dict[str, np.ndarray]:
        """Shoppers evaluated separately: cold-start shoppers of the silo and all its shoppers."""
        split = self.splits[silo or self.config.target]
        return {COLD: np.flatnonzero(split.cold), ALL: np.arange(split.num_users)}

    def shopper_data(self, silo: str) -> ShopperData:
        return ShopperData(
            self.splits[silo],
            user_rows=self.user_rows[silo],
            catalogue_rows=self.catalogue_rows[silo],
            max_interactions=self.config.max_interactions_per_shopper,
        )

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: {
                "shoppers": s.num_users,
                "items": s.num_items,
                "train_interactions": len(s.train_user),
                "cold_start_shoppers": int(s.cold.sum()),
            }
            for name, s in self.splits.items()
        }


def build_scenario(config: RunConfig, *, silos: tuple[str, ...] | None = None) -> Scenario:
    """Load, validate and split the configured silos (or ``silos``), and make the target data-poor.

    The cold-start selection needs every silo's shopper ids, so with ``cold-start-fraction`` > 0 it is
    made from all configured silos even when ``silos`` names only some (a node builds only its own
    silo's split, but the target's node then reads the source files too: an evaluation device for the
    bundled data). With ``cold-start-fraction`` = 0 a node reads its own file only."""
    start = time.perf_counter()
    weights = config.event_weight_map
    wanted = silos or config.silo_names
    withholding = config.target in wanted and config.cold_start_fraction > 0
    names = config.silo_names if withholding else wanted
    raw = {name: load_silo(silo_path(config.data_dir, name), name=name, event_weights=weights) for name in names}
    splits = {name: leave_one_out(data) for name, data in raw.items()}
    if withholding:
        sources: set[str] = set()
        for name in config.source_names:
            sources.update(splits[name].user_ids.tolist())
        cold = select_cold_start(
            splits[config.target],
            sources,
            fraction=config.cold_start_fraction,
            key=config.federation_key,
            seed=config.seed,
        )
        splits[config.target] = withhold(splits[config.target], cold)
    splits = {name: splits[name] for name in wanted}
    user_rows = {
        n: hash_ids(s.user_ids, key=config.federation_key, table_size=config.shopper_table_size, namespace="shopper")
        for n, s in splits.items()
    }
    catalogue_rows = {
        n: hash_ids(s.item_ids, key=config.federation_key, table_size=config.item_table_size, namespace="item")
        for n, s in splits.items()
    }
    collisions = _collisions(splits, user_rows, catalogue_rows, config)
    logger.info("scenario built in %.1f s: %s", time.perf_counter() - start, {n: s.num_users for n, s in splits.items()})
    return Scenario(config, splits, user_rows, catalogue_rows, collisions)


def _collisions(splits, user_rows, catalogue_rows, config: RunConfig) -> dict[str, CollisionReport]:
    """Collision rates over the distinct shoppers and items of all the given silos together."""

    def distinct(ids_by_silo: dict[str, np.ndarray], rows_by_silo: dict[str, np.ndarray]) -> np.ndarray:
        ids = np.concatenate([ids_by_silo[n] for n in splits])
        rows = np.concatenate([rows_by_silo[n] for n in splits])
        _, first = np.unique(ids, return_index=True)
        return rows[first]

    shoppers = distinct({n: s.user_ids for n, s in splits.items()}, user_rows)
    items = distinct({n: s.item_ids for n, s in splits.items()}, catalogue_rows)
    return {
        "shoppers": collision_report(shoppers, config.shopper_table_size),
        "items": collision_report(items, config.item_table_size),
    }


def resolve_data_dir(config: RunConfig, base: Path) -> RunConfig:
    """The config with a relative ``data-dir`` made absolute against ``base`` (the project folder)."""
    path = Path(config.data_dir)
    return config if path.is_absolute() else config.replace(data_dir=str((base / path).resolve()))
