"""hash_ids and collision_report: determinism, range, key/namespace separation, hand-counted collisions."""

from __future__ import annotations

import csv
import gzip
import tomllib
from pathlib import Path

import numpy as np
import pytest

from crossrec_core.keying import collision_report, hash_ids, keyed_uniform

ROOT = Path(__file__).resolve().parents[2]
IDS = [f"u{i:05d}" for i in range(500)]


def test_hash_ids_shape_dtype_and_range():
    rows = hash_ids(IDS, key="k", table_size=97, namespace="shopper")
    assert rows.shape == (500, 2) and rows.dtype == np.int64
    assert rows.min() >= 0 and rows.max() < 97
    # 1000 draws over 97 rows: nearly every row is hit, so the values are not stuck in a corner.
    assert len(np.unique(rows)) > 90


def test_hash_ids_is_deterministic_and_per_id():
    a = hash_ids(IDS, key="k", table_size=1000, namespace="item")
    b = hash_ids(list(reversed(IDS)), key="k", table_size=1000, namespace="item")
    assert np.array_equal(a, b[::-1])  # each id's rows depend on the id alone, not on its neighbours
    single = hash_ids([IDS[7]], key="k", table_size=1000, namespace="item")
    assert np.array_equal(single[0], a[7])


def test_str_and_bytes_key_agree():
    assert np.array_equal(
        hash_ids(IDS, key="secret", table_size=4096, namespace="shopper"),
        hash_ids(IDS, key=b"secret", table_size=4096, namespace="shopper"),
    )


def test_hash_ids_depends_on_key_and_namespace():
    base = hash_ids(IDS, key="k1", table_size=2**20, namespace="shopper")
    other_key = hash_ids(IDS, key="k2", table_size=2**20, namespace="shopper")
    other_ns = hash_ids(IDS, key="k1", table_size=2**20, namespace="item")
    # With 2^20 rows a chance match of a row is ~1e-6, so (almost) every row must differ.
    assert (base != other_key).mean() > 0.99
    assert (base != other_ns).mean() > 0.99
    assert (other_key != other_ns).mean() > 0.99


def test_hash_ids_two_rows_differ():
    rows = hash_ids(IDS, key="k", table_size=2**20, namespace="shopper")
    assert (rows[:, 0] != rows[:, 1]).mean() > 0.99  # the two hashes are independent


def test_hash_ids_table_size_one_and_empty():
    assert hash_ids(["a", "b"], key="k", table_size=1, namespace="item").tolist() == [[0, 0], [0, 0]]
    empty = hash_ids([], key="k", table_size=10, namespace="item")
    assert empty.shape == (0, 2) and empty.dtype == np.int64
    with pytest.raises(ValueError):
        hash_ids(["a"], key="k", table_size=0, namespace="item")


def test_keyed_uniform_in_unit_interval_and_deterministic():
    u = keyed_uniform(IDS, key="k", namespace="cold-start")
    assert u.shape == (500,) and np.all((u >= 0) & (u < 1))
    assert np.array_equal(u, keyed_uniform(IDS, key="k", namespace="cold-start"))
    assert 0.4 < u.mean() < 0.6


def test_collision_report_hand_counted():
    rows = np.array(
        [
            [1, 2],  # id0: same two rows as id1 (order does not matter: the representation is a sum)
            [2, 1],  # id1
            [3, 4],  # id2: shares row 4 with id3
            [4, 5],  # id3
            [6, 6],  # id4: both hashes in row 6, nobody else there -> no collision
            [7, 8],  # id5: alone
            [9, 0],  # id6: alone
            [3, 3],  # id7: shares row 3 with id2, but only one row
        ]
    )
    report = collision_report(rows, table_size=10)
    assert report.num_ids == 8 and report.table_size == 10
    # Sharing both rows: id0, id1 -> 2 of 8.
    assert report.share_both_rows == pytest.approx(2 / 8)
    # Sharing at least one row: id0, id1 (rows 1, 2), id2 (rows 3, 4), id3 (row 4), id7 (row 3) -> 5 of 8.
    assert report.share_one_row == pytest.approx(5 / 8)
    text = report.describe("shoppers")
    assert "8 ids" in text and "25.0000% share both rows" in text and "62.50% share at least one row" in text


def test_collision_report_three_way_and_none():
    rows = np.array([[5, 9], [9, 5], [5, 9], [0, 1]])
    report = collision_report(rows, table_size=10)
    assert report.share_both_rows == pytest.approx(3 / 4)
    assert report.share_one_row == pytest.approx(3 / 4)
    clean = collision_report(np.array([[0, 1], [2, 3], [4, 4]]), table_size=10)
    assert clean.share_both_rows == 0.0 and clean.share_one_row == 0.0
    empty = collision_report(np.zeros((0, 2), dtype=np.int64), table_size=10)
    assert (empty.num_ids, empty.share_one_row, empty.share_both_rows) == (0, 0.0, 0.0)


def test_real_shoppers_rarely_share_both_rows():
    data_dir = ROOT / "data" / "amazon4"
    files = sorted(data_dir.glob("*.csv.gz"))
    assert len(files) == 4, f"bundled data not found in {data_dir}"
    with open(ROOT / "pyproject.toml", "rb") as fh:
        config = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    table_size = config["shopper-table-size"]
    users: set[str] = set()
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            column = next(reader).index("user_id")
            users.update(row[column] for row in reader if row)
    assert len(users) == 103_446  # PROVENANCE.md: distinct shoppers
    rows = hash_ids(sorted(users), key=config["federation-key"], table_size=table_size, namespace="shopper")
    report = collision_report(rows, table_size)
    assert report.num_ids == len(users)
    assert report.share_both_rows < 0.01
