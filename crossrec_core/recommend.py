"""Recommendations out: the top-k items of a silo's final model for one shopper.

    python -m crossrec_core.recommend RUN_FOLDER --silo Toys --shopper u0123456789ab [-k 10]

RUN_FOLDER is a federated run folder (``federated-dp/``) or the run folder above it (then the DP run
is used if present). The silo's model is the one it kept on its side (``silos/<silo>/model.npz``, or
for a segment-transfer target ``segment_model.npz`` with the releases it received). A shopper the
silo has never seen still gets recommendations: their keyed rows in the shared shopper table carry
what other silos learned or released about them (the cold-start case). Items the shopper already has
in the silo's training data are not recommended again.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from crossrec_core.config import PROJECT_ROOT, RunConfig
from crossrec_core.errors import CrossrecError
from crossrec_core.keying import hash_ids
from crossrec_core.scenario import resolve_data_dir
from crossrec_core.segments import RELEASES_FILE, SegmentModel, load_releases, target_features
from crossrec_core.silo import MODEL_FILE, SEGMENT_MODEL_FILE, load_view, new_model


def find_run(folder: Path) -> Path:
    """The federated run folder inside (or at) ``folder``."""
    if not folder.is_dir():
        raise CrossrecError(f"{folder}: {'is not a folder' if folder.exists() else 'no such folder'}")
    if (folder / "federated.json").exists():
        return folder
    for name in ("federated-dp", "federated-nodp"):
        if (folder / name / "federated.json").exists():
            return folder / name
    raise CrossrecError(f"{folder}: not a completed federated run folder (no federated.json)")


def _saved_run_config(path: Path) -> dict:
    """The ``run_config`` mapping a run folder's config.json holds."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CrossrecError(f"{path}: missing; the run folder is incomplete") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CrossrecError(f"{path}: cannot read the run's config: {exc}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("run_config"), dict):
        raise CrossrecError(f"{path}: no 'run_config' table; not a crossrec run config")
    return saved["run_config"]


def recommend(run: Path, silo: str, shopper: str, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` best items (id, score) of ``silo``'s final model for ``shopper``."""
    if k < 1:
        raise CrossrecError(f"k must be >= 1, got {k}")
    run = find_run(run)
    config = RunConfig.from_mapping(_saved_run_config(run / "config.json"))
    config = resolve_data_dir(config, PROJECT_ROOT)
    shopper = shopper.strip()
    if not shopper:
        raise CrossrecError("--shopper is empty; give a shopper's user_id as in the silo's data")
    if (run / "silos" / silo / SEGMENT_MODEL_FILE).exists():
        scores, view = _segment_scores(run / "silos" / silo, config, silo, shopper)
        return _top(scores, view, shopper, k)
    model_path = run / "silos" / silo / MODEL_FILE
    if not model_path.exists():
        known = sorted(p.parent.name for name in (MODEL_FILE, SEGMENT_MODEL_FILE) for p in (run / "silos").glob(f"*/{name}"))
        raise CrossrecError(f"no model of silo {silo!r} in {run} (silos with a model: {', '.join(known) or 'none'})")
    view = load_view(config, silo)
    model = new_model(config, [silo], sparse=False)
    try:
        with np.load(model_path) as arrays:
            model.load_state_dict({name: torch.from_numpy(arrays[name]) for name in arrays.files})
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        detail = str(exc).strip().splitlines()[:3]
        raise CrossrecError(f"{model_path}: not a usable model of this run: {type(exc).__name__}: {' '.join(detail)}") from None
    if not all(torch.isfinite(v).all() for v in model.state_dict().values()):
        raise CrossrecError(f"{model_path}: the model holds NaN or infinite values; it cannot rank items")
    user_rows = hash_ids([shopper], key=config.federation_key, table_size=config.shopper_table_size, namespace="shopper")
    items, bias = model.item_vectors(torch.from_numpy(view.catalogue_rows), silo)
    scores = (model.user_vectors(torch.from_numpy(user_rows), silo) @ items.T + bias).numpy()[0]
    return _top(scores, view, shopper, k)


def _segment_scores(folder: Path, config: RunConfig, silo: str, shopper: str):
    """A segment-transfer target's scores for ``shopper``: the sources' released values at the
    shopper's row, through the target's segment model (both kept in the silo's folder)."""
    view = load_view(config, silo)
    path = folder / SEGMENT_MODEL_FILE
    try:
        model = SegmentModel.load(path, segments=config.segments, items=view.split.num_items)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CrossrecError(f"{path}: not a usable segment model of this run: {type(exc).__name__}: {exc}") from None
    try:
        releases = load_releases(folder)
        missing = [s for s in model.sources if s not in releases]
        if missing:
            raise KeyError(f"no release of {', '.join(missing)}")
        user_rows = hash_ids([shopper], key=config.federation_key, table_size=config.shopper_table_size, namespace="shopper")
        features = target_features({s: releases[s] for s in model.sources}, user_rows, config.segments,
                                   config.shopper_table_size)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CrossrecError(f"{folder / RELEASES_FILE}: not the releases this model was fitted from: "
                            f"{type(exc).__name__}: {exc}") from None
    position = np.searchsorted(view.split.user_ids, shopper)
    known = position < view.split.num_users and view.split.user_ids[position] == shopper
    history = np.array([bool(known) and bool((view.split.train_user == position).any())])
    return model.scorer(features, history).score_all(np.array([0]))[0], view


def _top(scores: np.ndarray, view, shopper: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` best-scored items, without those the shopper has in the silo's training data."""
    scores = np.array(scores, dtype=np.float64)
    position = np.searchsorted(view.split.user_ids, shopper)
    if position < view.split.num_users and view.split.user_ids[position] == shopper:
        seen = view.split.train_item[view.split.train_user == position]
        scores[seen] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return [(str(view.split.item_ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossrec_core.recommend", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", type=Path)
    parser.add_argument("--silo", required=True, help="the silo serving the recommendations, e.g. Toys")
    parser.add_argument("--shopper", required=True, help="the shopper's user_id as in the silo's data")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        items = recommend(args.run_folder, args.silo, args.shopper, args.k)
    except (CrossrecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model: {find_run(args.run_folder)}")
    for rank, (item, score) in enumerate(items, 1):
        print(f"{rank:3d}  {item}  {score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
