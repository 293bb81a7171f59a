"""Shared fixtures: the bundled data, a reproducible slice of it, and a planted-preference silo."""

from __future__ import annotations

import csv
import gzip
import zlib
from pathlib import Path

import pytest

from crossrec_core.config import PROJECT_ROOT, load_config

DATA_DIR = PROJECT_ROOT / "data" / "amazon4"
CATEGORIES = ("Beauty", "Sports", "Clothing", "Toys")


def write_slice(dest: Path, *, percent: int, categories=CATEGORIES) -> Path:
    """Copy the shoppers whose id hashes into the lowest ``percent`` buckets, from every category:
    the same shoppers in every file, so cross-category overlap is kept."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in categories:
        with gzip.open(DATA_DIR / f"{name}.csv.gz", "rt", newline="") as src, open(dest / f"{name}.csv", "w", newline="") as out:
            reader = csv.reader(src)
            writer = csv.writer(out)
            writer.writerow(next(reader))
            for row in reader:
                if zlib.crc32(row[0].encode()) % 100 < percent:
                    writer.writerow(row)
    return dest


@pytest.fixture(scope="session")
def data_slice(tmp_path_factory) -> Path:
    """About 10% of the shoppers of the four bundled categories."""
    return write_slice(tmp_path_factory.mktemp("amazon4-slice"), percent=10)


@pytest.fixture(scope="session")
def slice_config(data_slice):
    return load_config({"data-dir": str(data_slice), "epochs": 2, "shopper-table-size": 16384, "item-table-size": 16384})


def write_planted(path: Path, *, shoppers: int = 200, items_per_group: int = 30, history: int = 8, seed: int = 0) -> Path:
    """A silo with a known answer: even shoppers only use items 0..n-1, odd shoppers items n..2n-1."""
    import random

    rng = random.Random(seed)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "position"])
        for u in range(shoppers):
            offset = 0 if u % 2 == 0 else items_per_group
            for pos, item in enumerate(rng.sample(range(items_per_group), history)):
                w.writerow([f"shopper{u}", f"item{offset + item}", pos])
    return path


@pytest.fixture(scope="session")
def real_scenario():
    """The default scenario on the full bundled data (about 10 s to build)."""
    from crossrec_core.scenario import build_scenario

    return build_scenario(load_config({"data-dir": str(DATA_DIR)}))
