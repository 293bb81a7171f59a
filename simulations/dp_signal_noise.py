"""Where does DP noise cost the transfer? Signal vs noise per table row over one DP round of a real silo.

    python simulations/dp_signal_noise.py [--silo Beauty] [--epsilons 8,2] [-c key=value ...]

For each ε budget, the silo's privacy plan is calibrated as the main job does (all rounds plus
fine-tuning), then one round (``local-epochs``) of DP training runs from the initial shared tables.
At every step the clipped gradient sum (the signal Opacus adds noise to) and the Gaussian noise are
recorded separately and summed over the round, so per table row

    signal = || sum over steps of the clipped gradient sum on the row ||
    noise  = || sum over steps of the noise on the row ||

both before the optimizer (optimizer-independent). Rows are grouped: shopper rows of the silo's
shoppers (by how many training interactions the shopper has), shopper rows no shopper of the silo
uses, item rows of the catalogue (by the item's training interactions). Prints a Markdown table per ε.
Validation and test items are not used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crossrec_core.config import PROJECT_ROOT, load_config, parse_override  # noqa: E402
from crossrec_core.scenario import resolve_data_dir  # noqa: E402
from crossrec_core.silo import PRETRAIN, initial_shared, load_view, plan_privacy, train_round  # noqa: E402


class NoiseRecorder:
    """Wraps Opacus' ghost-clipping optimizer's ``add_noise`` to sum, per parameter, the clipped
    gradient sums and the noise it adds, over every step of a training call."""

    def __init__(self, shapes: dict[tuple[int, ...], str]) -> None:
        self.shapes = shapes
        self.signal: dict[str, torch.Tensor] = {}
        self.noise: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.norms: list[torch.Tensor] = []  # per-shopper gradient norms before clipping, every step
        self.share: dict[str, float] = {}  # per parameter: summed share of the squared per-shopper norm
        self.samples = 0

    def install(self):
        from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
        from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping

        original = DPOptimizerFastGradientClipping.add_noise
        original_norms = GradSampleModuleFastGradientClipping.get_norm_sample
        recorder = self

        def get_norm_sample(module):
            norms = original_norms(module)
            recorder.norms.append(norms.detach().clone())
            names = {id(p): n for n, p in module.named_parameters()}
            for p in module.trainable_parameters:
                share = (p._norm_sample.detach() ** 2 / norms.clamp_min(1e-12) ** 2).sum().item()
                key = names.get(id(p), "?").removeprefix("_module.")
                recorder.share[key] = recorder.share.get(key, 0.0) + share
            recorder.samples += len(norms)
            return norms

        def add_noise(opt):
            sums = {}
            for p in opt.params:
                name = recorder.shapes.get(tuple(p.shape))
                if name is not None and p.summed_grad is not None:
                    sums[name] = (p, p.summed_grad.detach().clone())
            original(opt)
            for name, (p, summed) in sums.items():
                noise = p.grad.detach().view_as(summed) - summed
                if name in recorder.signal:
                    recorder.signal[name] += summed
                    recorder.noise[name] += noise
                else:
                    recorder.signal[name], recorder.noise[name] = summed.clone(), noise.clone()
            recorder.steps += 1

        DPOptimizerFastGradientClipping.add_noise = add_noise
        GradSampleModuleFastGradientClipping.get_norm_sample = get_norm_sample

        def restore():
            DPOptimizerFastGradientClipping.add_noise = original
            GradSampleModuleFastGradientClipping.get_norm_sample = original_norms

        return restore


def quantile_groups(rows: np.ndarray, counts: np.ndarray, labels=("q1 (fewest)", "q2", "q3", "q4 (most)")):
    edges = np.quantile(counts, [0.25, 0.5, 0.75])
    which = np.searchsorted(edges, counts, side="right")
    return {f"{labels[k]} interactions {int(counts[which == k].min())}-{int(counts[which == k].max())}": rows[which == k]
            for k in range(4) if (which == k).any()}


def describe(name: str, rows: np.ndarray, signal: torch.Tensor, noise: torch.Tensor) -> str:
    rows = np.unique(rows)
    s = signal[rows].norm(dim=1).numpy()
    n = noise[rows].norm(dim=1).numpy()
    ratio = s / np.maximum(n, 1e-12)
    return (f"| {name} | {len(rows):,} | {np.median(s):.3g} | {np.median(n):.3g} | {np.median(ratio):.3f} "
            f"| {(ratio > 1).mean():.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silo", default="Beauty")
    parser.add_argument("--epsilons", default="8,2")
    parser.add_argument("-c", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = {"dp": True, **dict(parse_override(o) for o in args.overrides)}
    for eps in [float(e) for e in args.epsilons.split(",")]:
        config = resolve_data_dir(load_config({"private-transfer": "dp-sgd", **overrides, "epsilon-budget": eps}), PROJECT_ROOT)
        view = load_view(config, args.silo)
        plan = plan_privacy(view)
        shared = initial_shared(config)
        shapes = {(config.shopper_table_size, config.embedding_dim): "shopper", (config.item_table_size, config.embedding_dim): "item"}
        recorder = NoiseRecorder(shapes)
        restore = recorder.install()
        start = time.perf_counter()
        try:
            result = train_round(view, shared, None, None, epochs=config.local_epochs, round_number=1, phase=PRETRAIN)
        finally:
            restore()
        data = view.shopper_data()
        per_shopper = (data.weight > 0).sum(1).numpy()
        split = view.split
        item_counts = np.bincount(split.train_item, minlength=split.num_items)
        print(f"\n## {args.silo}, ε = {eps:g} (δ = {config.delta:g}): σ = {plan.noise_multiplier:.3f}, sample rate "
              f"{plan.sample_rate:.4f}, {recorder.steps} steps this round of {plan.planned_steps} planned, "
              f"clipping {config.max_grad_norm:g}; ε after this round {result.metrics['epsilon']:.3f}; "
              f"{time.perf_counter() - start:.0f} s\n")
        norms = torch.cat(recorder.norms).numpy()
        q = np.quantile(norms, [0.1, 0.5, 0.9])
        print(f"per-shopper gradient norm before clipping (all sampled shoppers of the round): 10% {q[0]:.3g}, "
              f"median {q[1]:.3g}, 90% {q[2]:.3g}; clipped (norm > {config.max_grad_norm:g}): "
              f"{(norms > config.max_grad_norm).mean():.1%}")
        shares = ", ".join(f"{k} {v / recorder.samples:.1%}" for k, v in sorted(recorder.share.items(), key=lambda kv: -kv[1]))
        print(f"mean share of a shopper's squared gradient norm by parameter: {shares}\n")
        print("| rows | count | median signal | median noise | median signal/noise | rows with signal > noise |")
        print("|---|---|---|---|---|---|")
        sig, noi = recorder.signal["shopper"], recorder.noise["shopper"]
        user_rows = data.user_rows.numpy()  # [S, 2]
        for label, members in quantile_groups(np.arange(len(data)), per_shopper).items():
            print(describe(f"shopper rows, {label}", user_rows[members].reshape(-1), sig, noi))
        unused = np.setdiff1d(np.arange(config.shopper_table_size), user_rows.reshape(-1))
        print(describe("shopper rows no shopper of the silo uses", unused, sig, noi))
        sig, noi = recorder.signal["item"], recorder.noise["item"]
        cat = view.catalogue_rows  # [I, 2]
        trained = np.flatnonzero(item_counts > 0)
        for label, members in quantile_groups(trained, item_counts[trained]).items():
            print(describe(f"item rows, {label}", cat[members].reshape(-1), sig, noi))


if __name__ == "__main__":
    main()
