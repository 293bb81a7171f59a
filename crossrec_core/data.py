"""Loading and validating one silo's interaction file.

A silo file is CSV, gzip CSV (``.csv.gz``) or Parquet with the columns ``user_id``, ``item_id``, an
order column (``position`` or ``timestamp``) and optionally ``event`` (e.g. ``view``/``cart``/``purchase``,
mapped to interaction weights). Every problem found is reported at once, with the file, the line (CSV,
header = line 1) or row (Parquet, 0-based) and the offending value.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from crossrec_core.errors import DataValidationError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user_id", "item_id")
ORDER_COLUMNS = ("position", "timestamp")
EVENT_COLUMN = "event"
MIN_INTERACTIONS = 3  # one to train on, one for validation, one for test
SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


@dataclass(frozen=True)
class SiloData:
    """One silo's interactions, sorted by shopper, then order, then file position.

    ``line`` holds each row's line number (CSV) or row number (Parquet) so later checks can point at it.
    """

    name: str
    path: Path
    user_ids: np.ndarray  # str, one per interaction
    item_ids: np.ndarray  # str
    order: np.ndarray  # float64
    weight: np.ndarray  # float32
    line: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def num_users(self) -> int:
        return len(np.unique(self.user_ids))

    @property
    def num_items(self) -> int:
        return len(np.unique(self.item_ids))


def silo_path(data_dir: str | Path, name: str) -> Path:
    """The file of silo ``name`` in ``data_dir``: the first of ``name + suffix`` that exists."""
    base = Path(data_dir)
    if not base.is_dir():
        what = "is not a folder" if base.exists() else "does not exist"
        raise DataValidationError(f"data folder {base} {what}", [f"'data-dir' = {str(data_dir)!r}: {what}"])
    for suffix in (".csv.gz", ".csv", ".parquet", ".pq"):
        candidate = base / f"{name}{suffix}"
        if candidate.exists() or candidate.is_symlink():  # a broken link is reported by load_silo
            return candidate
    raise DataValidationError(
        f"no data file for silo {name!r} in {base}",
        [f"looked for {name}.csv.gz, {name}.csv, {name}.parquet, {name}.pq"],
    )


def load_silo(
    path: str | Path,
    *,
    name: str | None = None,
    event_weights: Mapping[str, float] | None = None,
    min_interactions: int = MIN_INTERACTIONS,
) -> SiloData:
    """Read and validate a silo file; raise DataValidationError listing every problem found."""
    path = Path(path)
    name = name or _stem(path)
    columns, rows, where = _read_table(path)
    return _validate(path, name, columns, rows, where, event_weights or {}, min_interactions)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _read_table(path: Path) -> tuple[list[str], dict[str, list], str]:
    """(header, column -> values, "line"|"row"); raises DataValidationError for unreadable files."""
    if not path.exists():
        if path.is_symlink():
            raise DataValidationError(f"{path}: broken symbolic link", [f"{path} points to a missing file"])
        raise DataValidationError(f"{path}: file not found", [f"{path} does not exist"])
    if path.is_dir():
        raise DataValidationError(f"{path}: is a folder, not a data file", [str(path)])
    if not path.is_file():  # a FIFO, socket or device would block or make no sense
        raise DataValidationError(f"{path}: not a regular file", [f"{path} is a pipe, socket or device"])
    lower = path.name.lower()
    if lower.endswith((".parquet", ".pq")):
        return _read_parquet(path)
    if lower.endswith((".csv", ".csv.gz", ".gz")):
        return _read_csv(path)
    raise DataValidationError(
        f"{path}: unsupported file type", [f"expected one of {', '.join(SUFFIXES)}; got {path.name!r}"]
    )


def _read_csv(path: Path) -> tuple[list[str], dict[str, list], str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
            text = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataValidationError(f"{path}: cannot read", [f"{type(exc).__name__}: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}: not UTF-8 text", [f"byte offset {exc.start}: {exc.reason}"]) from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataValidationError(f"{path}: empty file", [f"{path}:1: no header and no rows (0 bytes of text)"]) from None
    except csv.Error as exc:
        raise DataValidationError(f"{path}: not valid CSV", [f"line 1: {exc}"]) from None
    header = [h.strip() for h in header]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataValidationError(
            f"{path}: repeated column name(s)",
            [f"{path}:1: column {h!r} appears {header.count(h)} times in the header {header!r}" for h in repeated],
        )
    columns: dict[str, list] = {h: [] for h in header}
    columns["__line__"] = []
    problems = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                problems.append(f"{path}:{line}: expected {len(header)} fields ({','.join(header)}), found {len(row)}: {row!r}")
                continue
            for h, value in zip(header, row):
                columns[h].append(value.strip())
            columns["__line__"].append(line)
    except csv.Error as exc:
        problems.append(f"{path}:{reader.line_num}: not valid CSV: {exc}")
    if problems:
        raise DataValidationError(f"{path}: malformed rows", problems)
    return header, columns, "line"


def _read_parquet(path: Path) -> tuple[list[str], dict[str, list], str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a declared dependency
        raise DataValidationError(f"{path}: cannot read Parquet", ["pyarrow is not installed"]) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataValidationError(f"{path}: cannot read Parquet", [f"{type(exc).__name__}: {exc}"]) from None
    header = list(table.column_names)
    columns = {h: ["" if v is None else str(v) for v in table.column(h).to_pylist()] for h in header}
    columns["__line__"] = list(range(table.num_rows))
    return header, columns, "row"


def _parse_order(values: Sequence[str], column: str) -> tuple[np.ndarray, list[int]]:
    """Order values as float64 and the indices that could not be parsed."""
    out = np.empty(len(values), dtype=np.float64)
    bad = []
    for i, value in enumerate(values):
        try:
            number = float(value)
            if not np.isfinite(number):
                raise ValueError
            if column == "position" and not number.is_integer():
                raise ValueError
            out[i] = number
        except ValueError:
            if column == "timestamp":
                try:
                    out[i] = datetime.fromisoformat(value).timestamp()
                    continue
                except ValueError:
                    pass
            bad.append(i)
    return out, bad


def _validate(
    path: Path,
    name: str,
    header: list[str],
    columns: dict[str, list],
    where: str,
    event_weights: Mapping[str, float],
    min_interactions: int,
) -> SiloData:
    def at(i: int) -> str:
        return f"{path}:{columns['__line__'][i]}" if where == "line" else f"{path} row {columns['__line__'][i]}"

    head = f"{path}:1" if where == "line" else f"{path} (header)"
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    order_cols = [c for c in ORDER_COLUMNS if c in header]
    if not order_cols:
        missing.append("position or timestamp")
    if missing:
        raise DataValidationError(
            f"{path}: missing column(s)",
            [f"{head}: missing {m!r}; the header has {header!r}" for m in missing],
        )
    n = len(columns["user_id"])
    if n == 0:
        raise DataValidationError(f"{path}: empty file", [f"{head}: the header {header!r} is followed by no data rows"])
    order_col = order_cols[0]
    problems: list[str] = []
    for col in REQUIRED_COLUMNS:
        for i, value in enumerate(columns[col]):
            if not value:
                problems.append(f"{at(i)}: column {col!r} is empty")
    order, bad = _parse_order(columns[order_col], order_col)
    for i in bad:
        what = "an integer" if order_col == "position" else "a number or an ISO 8601 date-time"
        problems.append(f"{at(i)}: column {order_col!r} = {columns[order_col][i]!r} is not {what}")
    weight = np.ones(n, dtype=np.float32)
    if EVENT_COLUMN in header:
        for i, event in enumerate(columns[EVENT_COLUMN]):
            if event in event_weights:
                weight[i] = event_weights[event]
            else:
                known = ", ".join(sorted(event_weights)) or "none configured"
                problems.append(f"{at(i)}: column 'event' = {event!r} is not a known event ({known})")
    if problems:
        raise DataValidationError(f"{path}: {len(problems)} invalid value(s)", problems)

    users = np.asarray(columns["user_id"], dtype=object)
    items = np.asarray(columns["item_id"], dtype=object)
    lines = np.asarray(columns["__line__"], dtype=np.int64)

    seen: dict[tuple[str, str, float], int] = {}
    for i in range(n):
        key = (users[i], items[i], order[i])
        if key in seen:
            problems.append(
                f"{at(i)}: duplicate of {where} {columns['__line__'][seen[key]]} "
                f"(user_id={users[i]!r}, item_id={items[i]!r}, {order_col}={columns[order_col][i]!r})"
            )
        else:
            seen[key] = i
    if problems:
        raise DataValidationError(f"{path}: {len(problems)} duplicate row(s)", problems)

    counts: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(users):
        counts[u].append(i)
    short = [(u, idx) for u, idx in counts.items() if len(idx) < min_interactions]
    if short:
        raise DataValidationError(
            f"{path}: {len(short)} shopper(s) have fewer than {min_interactions} interactions "
            "(leave-one-out needs one to train on, one for validation and one for test); "
            "remove them or give them more history",
            [f"{at(idx[0])}: user_id={u!r} has {len(idx)}" for u, idx in short],
        )

    sort = np.lexsort((lines, order, users.astype(str)))
    logger.info("%s: %d interactions, %d shoppers", name, n, len(counts))
    return SiloData(
        name=name,
        path=path,
        user_ids=users[sort].astype(str),
        item_ids=items[sort].astype(str),
        order=order[sort],
        weight=weight[sort],
        line=lines[sort],
    )
