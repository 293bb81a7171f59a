"""Compare aggregation rules on validation data, in one process (the same crossrec_core calls the
ClientApp and ServerApp make, without Flower's transport, so several rules fit in a few minutes).

    python simulations/compare_aggregation.py [--rules row-mean,sum,fedavg] [-c key=value ...]

Prints, per rule, the target's validation NDCG@10 (sampled) for cold-start and all shoppers after
every round and fine-tuning epoch. Test items are not used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crossrec_core.aggregation import aggregate, apply_update  # noqa: E402
from crossrec_core.config import PROJECT_ROOT, load_config, parse_override  # noqa: E402
from crossrec_core.evaluation import NDCG, ModelScorer, evaluate  # noqa: E402
from crossrec_core.scenario import resolve_data_dir  # noqa: E402
from crossrec_core.silo import FINETUNE, PRETRAIN, _model_for, initial_shared, load_view, train_round  # noqa: E402


def validation(view, shared, private) -> dict[str, float]:
    model = _model_for(view, shared, private)
    scorer = ModelScorer(model, view.name, view.user_rows, view.catalogue_rows)
    return {g: round(evaluate(scorer, view.split, view.negatives, u, stage="val", full=False).metrics[NDCG], 4)
            for g, u in view.groups().items()}


def run(config) -> list[tuple[str, dict[str, float]]]:
    views = {s: load_view(config, s) for s in config.node_silos}
    shared = initial_shared(config)
    private = {s: None for s in views}
    accountant = {s: None for s in views}
    history = []
    for r in range(1, config.num_server_rounds + 1):
        updates = []
        for s, view in views.items():
            res = train_round(view, shared, private[s], accountant[s], epochs=config.local_epochs, round_number=r, phase=PRETRAIN)
            private[s], accountant[s] = res.private, res.ledger
            updates.append(res.update)
        shared = aggregate(shared, updates, rule=config.aggregation)
        target = next(v for v in views.values() if v.is_target)
        history.append((f"round {r}", validation(target, shared, private[target.name])))
    target = next(v for v in views.values() if v.is_target)
    tuned, priv, acc = dict(shared), private[target.name], accountant[target.name]
    for e in range(1, int(config.finetune_epochs) + 1):
        res = train_round(target, tuned, priv, acc, epochs=1.0, round_number=e, phase=FINETUNE)
        tuned = apply_update(tuned, res.update)
        priv, acc = res.private, res.ledger
        history.append((f"fine-tune {e}", validation(target, tuned, priv)))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default="row-mean,sum,fedavg")
    parser.add_argument("-c", "--run-config", action="append", default=[])
    args = parser.parse_args()
    overrides = dict(parse_override(o) for o in args.run_config)
    for rule in args.rules.split(","):
        config = resolve_data_dir(load_config({**overrides, "aggregation": rule}), PROJECT_ROOT)
        start = time.perf_counter()
        history = run(config)
        print(json.dumps({"rule": rule, "overrides": overrides, "seconds": round(time.perf_counter() - start),
                          "validation_ndcg@10": history}), flush=True)


if __name__ == "__main__":
    main()
