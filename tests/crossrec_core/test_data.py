"""load_silo: one test per kind of bad input, plus the accepted formats and the sort order."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from crossrec_core.data import load_silo
from crossrec_core.errors import DataValidationError

WEIGHTS = {"view": 1.0, "cart": 2.0, "purchase": 4.0}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def fail(path: Path, **kwargs) -> str:
    with pytest.raises(DataValidationError) as info:
        load_silo(path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    return message


def names_line(message: str, path: Path, line: int) -> bool:
    """The message points at ``path:line`` (and not at, say, line 12 when asked for line 1)."""
    return re.search(re.escape(f"{path}:{line}") + r"(?!\d)", message) is not None


# ---- bad inputs --------------------------------------------------------------------------------


def test_missing_required_column(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,position\nu1,0\nu1,1\nu1,2\n")
    message = fail(path)
    assert names_line(message, path, 1)  # the header
    assert "'item_id'" in message
    assert "missing" in message


def test_missing_order_column(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,when\nu1,a,0\nu1,b,1\nu1,c,2\n")
    message = fail(path)
    assert names_line(message, path, 1)
    assert "position" in message and "timestamp" in message
    assert "'when'" in message  # the header it did find


def test_zero_byte_file(tmp_path):
    path = write(tmp_path / "s.csv", "")
    message = fail(path)
    assert names_line(message, path, 1)
    assert "empty" in message


def test_header_only_file(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position\n")
    message = fail(path)
    assert names_line(message, path, 1)
    assert "empty" in message or "no data rows" in message
    assert "user_id" in message  # the header, the only content there is


@pytest.mark.parametrize("bad", ["abc", "1.5", "", "nan", "inf"])
def test_unparsable_position(tmp_path, bad):
    path = write(tmp_path / "s.csv", f"user_id,item_id,position\nu1,a,0\nu1,b,1\nu1,c,{bad}\nu1,d,3\n")
    message = fail(path)
    assert names_line(message, path, 4)
    assert f"'position' = {bad!r}" in message
    assert not names_line(message, path, 2) and not names_line(message, path, 3)


def test_every_bad_position_is_reported_at_once(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position\nu1,a,x\nu1,b,1\nu1,c,2.5\n")
    message = fail(path)
    assert names_line(message, path, 2) and "'x'" in message
    assert names_line(message, path, 4) and "'2.5'" in message
    assert not names_line(message, path, 3)


def test_integral_float_position_accepted(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position\nu1,a,2.0\nu1,b,1e0\nu1,c,0\n")
    silo = load_silo(path)
    assert silo.item_ids.tolist() == ["c", "b", "a"]
    assert silo.order.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01T00:00:00", "12:00"])
def test_unparsable_timestamp(tmp_path, bad):
    path = write(
        tmp_path / "s.csv",
        f"user_id,item_id,timestamp\nu1,a,1704067200\nu1,b,{bad}\nu1,c,2024-01-02T00:00:00\n",
    )
    message = fail(path)
    assert names_line(message, path, 3)
    assert f"'timestamp' = {bad!r}" in message


def test_iso_timestamp_accepted(tmp_path):
    # 2024-01-01T00:00:00Z is 1704067200 s after the epoch (19723 days * 86400 s).
    path = write(
        tmp_path / "s.csv",
        "user_id,item_id,timestamp\n"
        "u1,c,2024-01-01T02:00:00+00:00\n"
        "u1,a,2024-01-01T00:00:00+00:00\n"
        "u1,b,1704070800\n"  # numbers and ISO date-times may be mixed: this is 01:00 UTC
        "u1,d,2024-01-01T03:00:00+01:00\n",  # = 02:00 UTC, ties with c, which comes first in the file
    )
    silo = load_silo(path)
    assert silo.item_ids.tolist() == ["a", "b", "c", "d"]
    assert silo.order.tolist() == [1704067200.0, 1704070800.0, 1704074400.0, 1704074400.0]
    assert silo.line.tolist() == [3, 4, 2, 5]


def test_naive_iso_timestamps_are_ordered(tmp_path):
    path = write(
        tmp_path / "s.csv",
        "user_id,item_id,timestamp\nu1,b,2024-03-01 12:00:00\nu1,c,2024-03-02\nu1,a,2023-12-31T23:59:59\n",
    )
    assert load_silo(path).item_ids.tolist() == ["a", "b", "c"]


def test_duplicate_rows_name_both_lines(tmp_path):
    path = write(
        tmp_path / "s.csv",
        "user_id,item_id,position\nu1,a,0\nu1,b,1\nu1,c,2\nu1,b,1\n",
    )
    message = fail(path)
    assert names_line(message, path, 5)  # the repeat
    assert re.search(r"line 3(?!\d)", message)  # the row it repeats
    assert "user_id='u1'" in message and "item_id='b'" in message and "position='1'" in message
    assert "duplicate" in message


def test_same_item_at_different_positions_is_not_a_duplicate(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position\nu1,a,0\nu1,a,1\nu1,a,2\n")
    assert len(load_silo(path)) == 3


def test_shopper_with_too_few_interactions(tmp_path):
    path = write(
        tmp_path / "s.csv",
        "user_id,item_id,position\nu1,a,0\nu1,b,1\nu1,c,2\nu2,a,0\nu2,b,1\nu3,c,0\n",
    )
    message = fail(path)
    assert names_line(message, path, 5) and "user_id='u2' has 2" in message  # u2's first row
    assert names_line(message, path, 7) and "user_id='u3' has 1" in message
    assert "'u1'" not in message
    assert "fewer than 3" in message


def test_unknown_event(tmp_path):
    path = write(
        tmp_path / "s.csv",
        "user_id,item_id,position,event\nu1,a,0,view\nu1,b,1,wishlist\nu1,c,2,purchase\n",
    )
    message = fail(path, event_weights=WEIGHTS)
    assert names_line(message, path, 3)
    assert "'event' = 'wishlist'" in message
    assert not names_line(message, path, 2) and not names_line(message, path, 4)


def test_event_without_configured_weights_is_rejected(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position,event\nu1,a,0,view\nu1,b,1,view\nu1,c,2,view\n")
    message = fail(path)
    assert names_line(message, path, 2) and "'view'" in message


def test_row_with_wrong_field_count(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position\nu1,a,0\nu1,b\nu1,c,2\n")
    message = fail(path)
    assert names_line(message, path, 3)
    assert "['u1', 'b']" in message


def test_empty_id(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position\nu1,a,0\nu1,,1\nu1,c,2\n")
    message = fail(path)
    assert names_line(message, path, 3) and "'item_id' is empty" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    fail(path)


# ---- accepted inputs ---------------------------------------------------------------------------

EVENT_CSV = (
    "user_id,item_id,position,event\n"
    "u2,x,2,purchase\n"  # line 2
    "u1,b,1,cart\n"  # line 3
    "u2,y,0,view\n"  # line 4
    "u1,a,0,view\n"  # line 5
    "u2,z,1,cart\n"  # line 6
    "u1,c,2,purchase\n"  # line 7
)
# Sorted by user then position: u1 a(5) b(3) c(7), u2 y(4) z(6) x(2).
EXPECTED_USERS = ["u1", "u1", "u1", "u2", "u2", "u2"]
EXPECTED_ITEMS = ["a", "b", "c", "y", "z", "x"]
EXPECTED_ORDER = [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
EXPECTED_WEIGHT = [1.0, 2.0, 4.0, 1.0, 2.0, 4.0]
EXPECTED_LINES = [5, 3, 7, 4, 6, 2]


def check_content(silo, lines):
    assert silo.user_ids.tolist() == EXPECTED_USERS
    assert silo.item_ids.tolist() == EXPECTED_ITEMS
    assert silo.order.tolist() == EXPECTED_ORDER
    assert silo.weight.dtype == np.float32
    assert silo.weight.tolist() == EXPECTED_WEIGHT
    assert silo.line.tolist() == lines
    assert silo.num_users == 2 and silo.num_items == 6 and len(silo) == 6


def test_event_weights_and_sorting(tmp_path):
    path = write(tmp_path / "Beauty.csv", EVENT_CSV)
    silo = load_silo(path, event_weights=WEIGHTS)
    assert silo.name == "Beauty"
    check_content(silo, EXPECTED_LINES)


def test_weight_is_one_without_event_column(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position\nu1,a,0\nu1,b,1\nu1,c,2\n")
    assert load_silo(path, event_weights=WEIGHTS).weight.tolist() == [1.0, 1.0, 1.0]


def test_sort_is_by_user_then_order_then_line(tmp_path):
    path = write(
        tmp_path / "s.csv",
        "user_id,item_id,position\n"
        "ub,p,10\n"  # 2
        "ua,q,2\n"  # 3
        "ub,r,9\n"  # 4
        "ua,s,2\n"  # 5  same position as line 3: file order breaks the tie
        "ua,t,-1\n"  # 6
        "ub,u,100\n",  # 7  numeric, not lexical, order: 9 < 10 < 100
    )
    silo = load_silo(path)
    assert silo.user_ids.tolist() == ["ua", "ua", "ua", "ub", "ub", "ub"]
    assert silo.item_ids.tolist() == ["t", "q", "s", "r", "p", "u"]
    assert silo.line.tolist() == [6, 3, 5, 4, 2, 7]


def test_gzip_csv_reads_like_plain_csv(tmp_path):
    path = tmp_path / "Beauty.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write(EVENT_CSV)
    silo = load_silo(path, event_weights=WEIGHTS)
    assert silo.name == "Beauty"
    check_content(silo, EXPECTED_LINES)


def test_gzip_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "s.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("user_id,item_id,position\nu1,a,0\nu1,b,oops\nu1,c,2\n")
    message = fail(path)
    assert names_line(message, path, 3) and "'oops'" in message


def test_parquet_reads_like_plain_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "user_id": ["u2", "u1", "u2", "u1", "u2", "u1"],
            "item_id": ["x", "b", "y", "a", "z", "c"],
            "position": pa.array([2, 1, 0, 0, 1, 2], type=pa.int64()),
            "event": ["purchase", "cart", "view", "view", "cart", "purchase"],
        }
    )
    path = tmp_path / "Beauty.parquet"
    pq.write_table(table, path)
    silo = load_silo(path, event_weights=WEIGHTS)
    assert silo.name == "Beauty"
    # Parquet rows are 0-based row numbers: CSV line - 2.
    check_content(silo, [3, 1, 5, 2, 4, 0])


def test_parquet_errors_name_the_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"user_id": ["u1"] * 3, "item_id": ["a", "b", "c"], "position": ["0", "1", "x"]}), path)
    message = fail(path)
    assert f"{path} row 2" in message and "'x'" in message


def test_windows_line_endings_and_utf8_bom(tmp_path):
    # Spreadsheet exports often start with a byte-order mark and end lines with CRLF.
    path = tmp_path / "s.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id,position\r\nu1,b,1\r\nu1,a,0\r\nu1,c,2\r\n")
    silo = load_silo(path)
    assert silo.item_ids.tolist() == ["a", "b", "c"]
    assert silo.line.tolist() == [3, 2, 4]


# ---- inputs found by hostile-input testing -----------------------------------------------------


def test_repeated_column_name_is_rejected(tmp_path):
    path = write(tmp_path / "s.csv", "user_id,item_id,position,user_id\nu1,a,0,u1\nu1,b,1,u1\nu1,c,2,u1\n")
    message = fail(path)
    assert names_line(message, path, 1)
    assert "'user_id' appears 2 times" in message


def test_data_dir_that_is_not_a_folder(tmp_path):
    from crossrec_core.data import silo_path

    missing, a_file = tmp_path / "nope", write(tmp_path / "f.csv", "x")
    for base, what in ((missing, "does not exist"), (a_file, "is not a folder")):
        with pytest.raises(DataValidationError, match=what) as info:
            silo_path(base, "Toys")
        assert str(base) in str(info.value) and "'data-dir'" in str(info.value)


def test_broken_symlink_is_named(tmp_path):
    from crossrec_core.data import silo_path

    (tmp_path / "Toys.csv").symlink_to(tmp_path / "gone.csv")
    message = fail(silo_path(tmp_path, "Toys"))
    assert "broken symbolic link" in message


def test_fifo_is_rejected_without_blocking(tmp_path):
    import os

    path = tmp_path / "s.csv"
    os.mkfifo(path)
    assert "not a regular file" in fail(path)
