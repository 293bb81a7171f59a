"""A silo operator's check before joining a federation: the node config, the silo's data file and
its privacy plan, validated exactly as the ClientApp will (same library, same errors).

    python -m client.check --node-config "silo='Toys' data-dir='/srv/crossrec/data' epsilon-budget=4"

``--node-config`` takes the string given to ``flower-superlink --node-config``. The run's settings
(rounds, budget, ...) default to this project's ``pyproject.toml``; give the federation's own with
``--experiment FILE`` or ``-c key=value``. Exits 0 when the silo is ready, 2 with every problem
found otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys

from flwr.common.config import parse_config_args

from client.client_app import NODE_OVERRIDES, node_run_config, node_silo
from crossrec_core.config import load_config, parse_override
from crossrec_core.errors import CrossrecError
from crossrec_core.silo import load_view, plan_privacy

NODE_KEYS = ("silo", "partition-id", "state-dir", *NODE_OVERRIDES)  # what the ClientApp reads from node_config


def check_node(node_config: dict, overrides: dict) -> list[str]:
    """Lines describing the ready silo; raises CrossrecError (or ValueError) naming what is wrong."""
    run_config = load_config(overrides).to_run_config()
    config = node_run_config(run_config, node_config)
    silo = node_silo(config, node_config)
    view = load_view(config, silo)
    split = view.split
    lines = [
        f"silo {view.name} (category {view.category}{', the target' if view.is_target else ''}): "
        f"data folder {config.data_dir}",
        f"  {split.num_users} shoppers, {split.num_items} items, {len(split.train_user)} training interactions"
        + (f", {int(split.cold.sum())} cold-start shoppers held out" if view.is_target else ""),
    ]
    if config.dp:
        plan = plan_privacy(view)
        lines.append(
            f"  privacy: ε budget {plan.epsilon_budget} at δ = {plan.delta} over {config.num_server_rounds} rounds"
            f"{' + fine-tuning' if plan.finetune_steps else ''}; {plan.planned_steps} DP steps at sample rate "
            f"{plan.sample_rate:.4g}, noise multiplier {plan.noise_multiplier:.3f} ({plan.accountant})")
    else:
        lines.append("  privacy: dp = false, this silo would train WITHOUT differential privacy")
    ignored = sorted(set(node_config) - set(NODE_KEYS))
    if ignored:
        lines.append(f"  note: node config keys the ClientApp ignores: {', '.join(ignored)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--node-config", required=True, help="the SuperNode's --node-config string")
    parser.add_argument("--experiment", help="a TOML file of the federation's run_config overrides")
    parser.add_argument("-c", "--run-config", action="append", default=[], metavar="KEY=VALUE",
                        help="one of the federation's run_config overrides (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from server.simulate import read_experiment  # the same reader as the main job's

    try:
        try:
            node_config = parse_config_args([args.node_config])
        except Exception as exc:  # Flower's parser raises ValueError or TOML errors
            raise CrossrecError(f"cannot parse --node-config {args.node_config!r}: {exc}") from None
        overrides = read_experiment(args.experiment)
        overrides.update(dict(parse_override(o) for o in args.run_config))
        lines = check_node(node_config, overrides)
    except (CrossrecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print("ready to join")
    return 0


if __name__ == "__main__":
    sys.exit(main())
