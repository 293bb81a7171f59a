"""Writing results: atomic files, the comparison table (Markdown + JSON), the code version."""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from crossrec_core import __version__
from crossrec_core.config import PROJECT_ROOT
from crossrec_core.evaluation import FULL_NDCG, FULL_RECALL, HR, MRR, NDCG

TABLE_COLUMNS = (HR, NDCG, MRR, FULL_RECALL, FULL_NDCG)


def write_npz_atomic(path: Path, arrays: dict) -> Path:
    """``np.savez_compressed`` of ``arrays`` to ``path`` through a temporary file and a rename."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def code_version() -> dict[str, str]:
    """The package version and, when run from a git checkout, the commit (with ``+dirty`` if modified)."""
    info = {"package": __version__}
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            )
            info["commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def new_run_dir(output_dir: str | Path, prefix: str) -> Path:
    """A fresh, uniquely named folder under ``output_dir``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir)
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        candidate = base / (f"{prefix}-{stamp}" + (f"-{i}" if i else ""))
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder under {base}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def comparison_markdown(
    rows: Sequence[Mapping[str, Any]], *, title: str, notes: Sequence[str] = ()
) -> str:
    """A Markdown table: one row per (method, group), metric columns, and any extra ``epsilon``."""
    head = ["method", "shoppers", "n"] + list(TABLE_COLUMNS) + ["ε"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        eps = row.get("epsilon")
        cells = [row["method"], row["group"], str(row["num_users"])]
        cells += [_fmt(row["metrics"].get(k)) for k in TABLE_COLUMNS]
        cells.append("∞ (no DP)" if eps is None else f"{eps:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"
