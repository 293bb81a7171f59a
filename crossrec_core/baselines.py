"""Centralized baselines on the federation's splits and negatives: popularity, target-only and pooled.

    python -m crossrec_core.baselines [-c key=value ...]

- popularity: target items ranked by their training count in the target;
- target-only: the model trained on the target silo alone (no transfer; cold-start shoppers have no
  training data there);
- pooled: one non-private model over all silos' training data (the upper bound a federation tries to
  approach).

Model selection: each trained model keeps the epoch with the best validation NDCG@10 (sampled) of the
target, averaged over cold-start and all shoppers; test items are never looked at before the final
evaluation.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossrec_core.config import PROJECT_ROOT, RunConfig, load_config, parse_override
from crossrec_core.errors import CrossrecError
from crossrec_core.evaluation import NDCG, ModelScorer, PopularityScorer, Scorer, evaluate
from crossrec_core.model import CrossRecModel
from crossrec_core.reporting import code_version, comparison_markdown, new_run_dir, write_atomic, write_json
from crossrec_core.scenario import Scenario, build_scenario, resolve_data_dir
from crossrec_core.silo import new_model, train_settings
from crossrec_core.training import clone_state, train

logger = logging.getLogger(__name__)

METHODS = ("popularity", "target-only", "pooled")


def model_scorer(model: CrossRecModel, scenario: Scenario, silo: str) -> ModelScorer:
    return ModelScorer(model, silo, scenario.user_rows[silo], scenario.catalogue_rows[silo])


def validation_ndcg(scorer: Scorer, scenario: Scenario) -> float:
    """The selection criterion: validation NDCG@10 (sampled) of the target, averaged over the two
    reported groups (cold-start shoppers and all shoppers), so neither group alone decides."""
    target = scenario.config.target
    groups = [u for u in scenario.groups().values() if len(u)]
    scores = [
        evaluate(scorer, scenario.target, scenario.negatives(target), users, stage="val", full=False).metrics[NDCG]
        for users in groups
    ]
    return float(sum(scores) / len(scores))


def fit_selected(model: CrossRecModel, scenario: Scenario, silos: Sequence[str], *, progress: bool) -> dict[str, Any]:
    """Train without DP for ``epochs``, keeping the epoch with the best target validation NDCG@10."""
    config = scenario.config
    best: dict[str, Any] = {"epoch": 0, "val_ndcg": validation_ndcg(model_scorer(model, scenario, config.target), scenario)}
    best_state = clone_state(model)

    def on_epoch_end(epoch: int) -> dict[str, float]:
        nonlocal best_state
        score = validation_ndcg(model_scorer(model, scenario, config.target), scenario)
        if score > best["val_ndcg"]:
            best.update(epoch=epoch, val_ndcg=score)
            best_state = clone_state(model)
        return {"val_ndcg@10": score}

    report = train(
        model,
        [scenario.shopper_data(s) for s in silos],
        settings=train_settings(config),
        epochs=config.epochs,
        seed=config.seed,
        on_epoch_end=on_epoch_end,
        progress=progress,
    )
    model.load_state_dict(best_state)
    return {
        "selected_epoch": best["epoch"],
        "val_ndcg@10": best["val_ndcg"],
        "epochs": report.epoch_metrics,
        "examples_per_second": report.examples_per_second,
    }


def evaluate_groups(scorer: Scorer, scenario: Scenario, method: str, **extra: Any) -> list[dict[str, Any]]:
    """One table row per shopper group (cold-start, all) of the target, on the test items."""
    target = scenario.config.target
    rows = []
    for group, users in scenario.groups().items():
        result = evaluate(scorer, scenario.target, scenario.negatives(target), users, stage="test")
        rows.append({"method": method, "group": group, "num_users": result.num_users, "metrics": result.metrics, **extra})
    return rows


def run_baselines(
    config: RunConfig,
    *,
    methods: Sequence[str] = METHODS,
    scenario: Scenario | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(table rows, details per method) of the requested baselines on the target silo."""
    unknown = set(methods) - set(METHODS)
    if unknown or not methods or len(set(methods)) != len(methods):
        raise CrossrecError(f"--methods must name each of {METHODS} at most once, and at least one; got {list(methods)}")
    torch.manual_seed(config.seed)  # only reached by code outside our explicit generators
    scenario = scenario or build_scenario(config)
    target = config.target
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for method in methods:
        start = time.perf_counter()
        logger.info("baseline %s ...", method)
        if method == "popularity":
            scorer: Scorer = PopularityScorer(scenario.target)
            info: dict[str, Any] = {}
        else:
            silos = [target] if method == "target-only" else list(config.silo_names)
            model = new_model(config, silos, sparse=True)
            model.train_heads(config.head == "always")
            info = fit_selected(model, scenario, silos, progress=progress)
            scorer = model_scorer(model, scenario, target)
        rows.extend(evaluate_groups(scorer, scenario, method, epsilon=None))
        info["seconds"] = round(time.perf_counter() - start, 2)
        details[method] = info
        logger.info("baseline %s done in %.1f s", method, info["seconds"])
    return rows, details


def write_baselines(run_dir: Path, config: RunConfig, scenario: Scenario, rows, details, seconds: float) -> str:
    notes = [
        f"target silo: {config.target}; cold-start shoppers: {int(scenario.target.cold.sum())} of "
        f"{scenario.target.num_users} (fraction {config.cold_start_fraction} of those who also shop in a source silo)",
        "sampled metrics rank the test item against the same 99 seeded negatives for every method; "
        "full metrics rank it against the target catalogue minus the shopper's training and validation items",
        "trained models keep the epoch with the best target validation NDCG@10 (mean of cold-start and all shoppers)",
        scenario.collisions["shoppers"].describe("shopper keying"),
        scenario.collisions["items"].describe("item keying"),
    ]
    markdown = comparison_markdown(rows, title=f"Baselines on target {config.target}", notes=notes)
    write_json(run_dir / "config.json", {"run_config": config.to_run_config(), "code_version": code_version()})
    write_json(
        run_dir / "comparison.json",
        {"rows": rows, "details": details, "scenario": scenario.summary(), "wall_seconds": round(seconds, 2)},
    )
    write_atomic(run_dir / "comparison.md", markdown)
    return markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossrec_core.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--run-config", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run_config key (repeatable), e.g. -c target=Beauty -c epochs=3")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    try:
        config = load_config(dict(parse_override(o) for o in args.run_config))
        config = resolve_data_dir(config, PROJECT_ROOT)
        output = Path(config.output_dir) if Path(config.output_dir).is_absolute() else PROJECT_ROOT / config.output_dir
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CrossrecError(f"cannot create output-dir {output}: {exc}") from None
        scenario = build_scenario(config)
        rows, details = run_baselines(
            config, methods=[m.strip() for m in args.methods.split(",") if m.strip()], scenario=scenario, progress=not args.quiet
        )
        seconds = time.perf_counter() - start
        run_dir = new_run_dir(output, "baselines")
        markdown = write_baselines(run_dir, config, scenario, rows, details, seconds)
    except CrossrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown)
    print(f"wall time: {seconds:.1f} s")
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
