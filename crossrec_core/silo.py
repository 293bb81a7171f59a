"""What one silo does in a federation, without Flower: its data view, its privacy plan, a training
round that returns only the shared tensors' update, and evaluation on its own held-out items.

A silo is a category (``Toys``) or, with ``merchants-per-category`` = m > 1, one of m merchants of a
category (``Toys-1`` .. ``Toys-m``) that share the category's catalogue but not its shoppers.
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossrec_core.aggregation import SiloUpdate
from crossrec_core.config import RunConfig
from crossrec_core.errors import PrivacyError, TrainingError
from crossrec_core.evaluation import NDCG, ModelScorer, evaluate
from crossrec_core.keying import keyed_uniform
from crossrec_core.model import CrossRecModel, split_state
from crossrec_core.privacy import PrivacyLedger
from crossrec_core.reporting import write_npz_atomic
from crossrec_core.segments import (
    SegmentModel,
    SegmentPlan,
    fit_segment_model,
    has_history,
    plan_segments,
    release,
    target_features,
)
from crossrec_core.scenario import COLD, ALL, build_scenario
from crossrec_core.splits import EvalNegatives, SiloSplit, derive_rng
from crossrec_core.training import (
    DPSettings,
    ShopperData,
    TrainSettings,
    calibrate_noise,
    steps_per_epoch,
    train,
)

logger = logging.getLogger(__name__)

PRETRAIN = "pretrain"  # phases of a federated run
FINETUNE = "finetune"
SHOPPER_TABLE = "shopper_table.weight"
ITEM_TABLE = "item_table.weight"


def category_of(silo: str, config: RunConfig) -> tuple[str, int]:
    """(category, merchant index) of a node's silo name."""
    if config.merchants_per_category == 1:
        if silo not in config.silo_names:
            raise ValueError(f"unknown silo {silo!r}; the federation has {', '.join(config.silo_names)}")
        return silo, 0
    category, _, number = silo.rpartition("-")
    if category not in config.silo_names or not number.isdigit() or not 1 <= int(number) <= config.merchants_per_category:
        raise ValueError(f"unknown silo {silo!r}; the federation has {', '.join(config.node_silos)}")
    return category, int(number) - 1


def merchant_of(user_ids: np.ndarray, *, key: str, merchants: int) -> np.ndarray:
    """The merchant (0..m-1) each shopper of a category belongs to, fixed by the federation key."""
    return np.minimum((keyed_uniform(user_ids, key=key, namespace="merchant") * merchants).astype(np.int64), merchants - 1)


def restrict(split: SiloSplit, keep_users: np.ndarray, name: str) -> SiloSplit:
    """The split of the shoppers in ``keep_users`` (bool mask), same catalogue, users re-indexed."""
    new_index = np.full(split.num_users, -1, dtype=np.int64)
    new_index[keep_users] = np.arange(int(keep_users.sum()))
    rows = keep_users[split.train_user]
    seen_u, seen_i = split.seen_items
    seen_keep = keep_users[seen_u]
    return SiloSplit(
        name=name,
        user_ids=split.user_ids[keep_users],
        item_ids=split.item_ids,
        train_user=new_index[split.train_user[rows]],
        train_item=split.train_item[rows],
        train_weight=split.train_weight[rows],
        train_row=split.train_row[rows],
        val_item=split.val_item[keep_users],
        val_row=split.val_row[keep_users],
        test_item=split.test_item[keep_users],
        test_row=split.test_row[keep_users],
        seen_items=(new_index[seen_u[seen_keep]], seen_i[seen_keep]),
        cold=split.cold[keep_users],
    )


@dataclass(frozen=True)
class SiloView:
    """One node's data: its split, evaluation negatives and keyed table rows."""

    name: str
    category: str
    split: SiloSplit
    negatives: EvalNegatives
    user_rows: np.ndarray
    catalogue_rows: np.ndarray
    config: RunConfig

    @property
    def is_target(self) -> bool:
        return self.category == self.config.target

    def shopper_data(self) -> ShopperData:
        return ShopperData(
            self.split,
            user_rows=self.user_rows,
            catalogue_rows=self.catalogue_rows,
            max_interactions=self.config.max_interactions_per_shopper,
        )

    def groups(self) -> dict[str, np.ndarray]:
        groups = {ALL: np.arange(self.split.num_users)}
        if self.is_target:
            groups = {COLD: np.flatnonzero(self.split.cold), **groups}
        return groups


@functools.lru_cache(maxsize=8)
def load_view(config: RunConfig, silo: str) -> SiloView:
    """Build (once per process and config) the view of ``silo``: the category's scenario, cut to the
    merchant. Negatives are drawn per category, so every method and merchant count sees the same."""
    category, merchant = category_of(silo, config)
    scenario = build_scenario(config, silos=(category,))
    split, negatives = scenario.splits[category], scenario.negatives(category)
    user_rows = scenario.user_rows[category]
    if config.merchants_per_category > 1:
        keep = merchant_of(split.user_ids, key=config.federation_key, merchants=config.merchants_per_category) == merchant
        split = restrict(split, keep, silo)
        negatives = EvalNegatives(val=negatives.val[keep], test=negatives.test[keep])
        user_rows = user_rows[keep]
    return SiloView(silo, category, split, negatives, user_rows, scenario.catalogue_rows[category], config)


def train_settings(config: RunConfig, *, dp: bool = False) -> TrainSettings:
    """Optimisation settings; with DP the expected batch is ``dp-batch-size`` shoppers and Adam's
    momentum is ``dp-adam-beta1``."""
    return TrainSettings(
        loss=config.loss,  # type: ignore[arg-type]
        l2=config.l2,
        learning_rate=config.learning_rate,
        adam_beta1=config.dp_adam_beta1 if dp else config.adam_beta1,
        batch_size=config.dp_batch_size if dp else config.batch_size,
        train_negatives=config.train_negatives,
        max_interactions=config.max_interactions_per_shopper,
    )


@dataclass(frozen=True)
class PrivacyPlan:
    """The silo's whole planned DP work, calibrated once: every round uses the same noise."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    finetune_steps: int
    planned_steps: int
    epsilon_budget: float
    delta: float
    max_grad_norm: float
    accountant: str
    max_interactions_per_shopper: int
    planned_pure_epsilon: float = 0.0  # segment transfer: the randomized response's ε

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_privacy(view: SiloView) -> PrivacyPlan:
    """Noise for all ``num-server-rounds`` x ``local-epochs`` (and, on the target, ``finetune-epochs``)."""
    shoppers = len(np.unique(view.split.train_user))  # the DP samples: shoppers with training data
    return plan_for(view.config, shoppers, is_target=view.is_target)


def segment_plan(config: RunConfig) -> SegmentPlan:
    return plan_segments(epsilon=config.epsilon_budget, delta=config.delta, segments=config.segments,
                         top_items=config.segment_top_items, kmeans_iters=config.segment_kmeans_iters,
                         gaussian_share=config.segment_gaussian_share, accountant=config.accountant)


def plan_for(config: RunConfig, shoppers: int, *, is_target: bool) -> PrivacyPlan:
    """The privacy plan of a silo with ``shoppers`` DP samples; PrivacyError if the budget cannot
    cover the planned steps at any noise level.

    With segment transfer a source plans its one release (Gaussian steps at sample rate 1 plus the
    randomized response) and the target plans nothing (it releases nothing)."""
    if config.segment_transfer:
        if is_target:  # the target releases nothing: no noise to plan
            return PrivacyPlan(0.0, 1.0, 0, 0, 0, config.epsilon_budget, config.delta, 1.0, config.accountant,
                               config.max_interactions_per_shopper, 0.0)
        plan = segment_plan(config)
        return PrivacyPlan(plan.noise_multiplier, 1.0, plan.gaussian_steps, 0, plan.gaussian_steps,
                           config.epsilon_budget, config.delta, 1.0, config.accountant,
                           config.max_interactions_per_shopper, plan.rr_epsilon)
    per_epoch = steps_per_epoch(shoppers, config.dp_batch_size)
    per_round = max(1, round(config.local_epochs * per_epoch))
    finetune = round(config.finetune_epochs * per_epoch) if is_target else 0
    planned = config.num_server_rounds * per_round + finetune
    sigma = calibrate_noise(
        epsilon=config.epsilon_budget,
        delta=config.delta,
        sample_rate=1.0 / per_epoch,
        steps=planned,
        accountant=config.accountant,  # type: ignore[arg-type]
    )
    return PrivacyPlan(
        sigma, 1.0 / per_epoch, per_round, finetune, planned, config.epsilon_budget, config.delta,
        config.max_grad_norm, config.accountant, config.max_interactions_per_shopper,
    )


def check_privacy_plans(config: RunConfig, scenario) -> dict[str, PrivacyPlan]:
    """Every node silo's plan under the run's budget, from the scenario's splits (before any run
    starts); one PrivacyError naming every silo whose plan is impossible."""
    plans: dict[str, PrivacyPlan] = {}
    problems: list[str] = []
    for category in config.silo_names:
        split = scenario.splits[category]
        trained = np.unique(split.train_user)
        if config.merchants_per_category > 1:
            merchant = merchant_of(split.user_ids[trained], key=config.federation_key, merchants=config.merchants_per_category)
            counts = {f"{category}-{j + 1}": int((merchant == j).sum()) for j in range(config.merchants_per_category)}
        else:
            counts = {category: len(trained)}
        for silo, shoppers in counts.items():
            try:
                plans[silo] = plan_for(config, shoppers, is_target=category == config.target)
            except PrivacyError as exc:
                problems.append(f"{silo} ({shoppers} shoppers): {exc}")
    if problems:
        raise PrivacyError("impossible privacy plan, nothing was trained:\n  " + "\n  ".join(problems))
    return plans


def new_ledger(view: SiloView, plan: PrivacyPlan | None = None) -> PrivacyLedger:
    """An empty ledger for the silo's whole planned DP work (``plan_privacy`` if no plan is given)."""
    plan = plan or plan_privacy(view)
    return PrivacyLedger(
        silo=view.name, category=view.category, epsilon_budget=plan.epsilon_budget, delta=plan.delta,
        accountant=plan.accountant, max_grad_norm=plan.max_grad_norm,
        max_interactions_per_shopper=plan.max_interactions_per_shopper, noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate, planned_steps=plan.planned_steps,
        planned_pure_epsilon=plan.planned_pure_epsilon, noise_seed="secret" if view.config.secure_noise else "run seed",
    )


def new_model(config: RunConfig, silos, *, sparse: bool) -> CrossRecModel:
    return CrossRecModel(
        shopper_rows=config.shopper_table_size,
        item_rows=config.item_table_size,
        dim=config.embedding_dim,
        silos=silos,
        seed=config.seed,
        sparse=sparse,
    )


def initial_shared(config: RunConfig) -> dict[str, np.ndarray]:
    """The shared tensors every federation starts from (fixed by the run seed)."""
    model = new_model(config, ["init"], sparse=False)
    shared, _ = split_state(model.state_dict())
    return {k: v.numpy().copy() for k, v in shared.items()}


@dataclass
class RoundResult:
    update: SiloUpdate  # what leaves the silo: deltas of the shared rows it trained
    private: dict[str, np.ndarray]
    ledger: PrivacyLedger | None  # with DP: the silo's ledger, this round's steps recorded
    metrics: dict[str, float]


def _model_for(view: SiloView, shared: dict[str, np.ndarray], private: dict[str, np.ndarray] | None) -> CrossRecModel:
    model = new_model(view.config, [view.name], sparse=not view.config.dp)
    state = model.state_dict()
    for name, value in shared.items():
        if name not in state or tuple(state[name].shape) != value.shape:
            raise ValueError(f"shared tensor {name!r} of shape {value.shape} does not fit this model")
        state[name] = torch.from_numpy(np.array(value, dtype=np.float32))
    for name, value in (private or {}).items():
        state[name] = torch.from_numpy(np.array(value))
    model.load_state_dict(state)
    return model


def train_round(
    view: SiloView,
    shared: dict[str, np.ndarray],
    private: dict[str, np.ndarray] | None,
    ledger: PrivacyLedger | None,
    *,
    epochs: float,
    round_number: int,
    phase: str,
) -> RoundResult:
    """Train the silo from the global shared tensors; return the update of the shared rows it trained
    (every shopper row with DP), the new private state, the accountant state and metrics (incl. validation NDCG@10 on own shoppers).

    With DP, ``ledger`` (a new one if None) holds the silo's steps so far; the round refuses
    (PrivacyError, refusal recorded in the ledger) when its steps would take ε beyond the budget."""
    config = view.config
    if config.segment_transfer:
        raise TrainingError(f"{view.name}: DP-SGD rounds were asked for in a segment-transfer run "
                            "(private-transfer = 'segments'); set private-transfer = 'dp-sgd' to train with DP-SGD")
    data = view.shopper_data()
    start = time.perf_counter()
    model = _model_for(view, shared, private)
    model.train_heads(config.head == "always" or (config.head == "finetune" and phase == FINETUNE))
    dp = None
    if config.dp:
        ledger = ledger if ledger is not None else new_ledger(view)
        steps = max(1, round(epochs * round(1.0 / ledger.sample_rate)))
        ledger.check(steps, phase=phase, round_number=round_number)
        dp = DPSettings(ledger.noise_multiplier, ledger.max_grad_norm, ledger.delta, ledger.accountant)  # type: ignore[arg-type]
    if dp is not None and ledger.noise_seed == "secret":
        # the DP randomness must not be reproducible from anything outside the silo (the run seed is
        # known to the server): fresh OS entropy for sampling, negatives and noise
        seed = secrets.randbits(62)
    else:
        seed = int(derive_rng(config.seed, view.name, phase, str(round_number)).integers(2**31))
    report = train(
        model, data, settings=train_settings(config, dp=config.dp), epochs=epochs, seed=seed, dp=dp,
        accountant_state_in={"history": ledger.history} if dp is not None else None, progress=False,
    )
    if dp is not None:
        entry = ledger.record(phase=phase, round_number=round_number, steps=report.steps,
                              noise_multiplier=dp.noise_multiplier, sample_rate=report.sample_rate)
        tolerance = 1e-9 if dp.accountant == "rdp" else 0.05
        if abs(entry["epsilon"] - report.epsilon) > tolerance * max(1.0, report.epsilon):
            raise TrainingError(
                f"{view.name}: the ledger's ε {entry['epsilon']:.6f} disagrees with the training accountant's "
                f"{report.epsilon:.6f}; not sending this update"
            )
    new_shared, new_private = split_state(model.state_dict())
    # Item rows: the silo's catalogue (public: its product list), with or without DP. Shopper rows:
    # without DP the rows its shoppers use; with DP every row, all noised, since a mask of the rows
    # its shoppers use would reveal who they are. Rows outside what is sent are never used again
    # here (evaluation scores catalogue items only), so dropping them is post-processing.
    trained = {
        SHOPPER_TABLE: None if config.dp else _rows(data.user_rows.numpy()),
        ITEM_TABLE: _rows(view.catalogue_rows),
    }
    deltas = {}
    for name in shared:
        rows = trained[name]
        new = new_shared[name].numpy()
        deltas[name] = new - shared[name] if rows is None else new[rows] - shared[name][rows]
    update = SiloUpdate(deltas, trained, len(data))
    val = evaluate(ModelScorer(model, view.name, view.user_rows, view.catalogue_rows), view.split, view.negatives,
                   np.arange(view.split.num_users), stage="val", full=False)
    metrics = {
        "loss": report.mean_loss,
        "steps": report.steps,
        "num-examples": len(data),
        "interactions": report.interactions,
        "train-seconds": report.seconds,
        "round-seconds": time.perf_counter() - start,
        "val-ndcg@10": val.metrics[NDCG],
        "epsilon": ledger.spent if dp is not None else 0.0,
    }
    if dp is not None:
        metrics.update({"epsilon-budget": ledger.epsilon_budget, "epsilon-remaining": ledger.remaining,
                        "noise-multiplier": ledger.noise_multiplier, "sample-rate": ledger.sample_rate})
    return RoundResult(
        update,
        {k: v.numpy().copy() for k, v in new_private.items()},
        ledger if dp is not None else None,
        metrics,
    )


def _rows(keyed_rows: np.ndarray) -> np.ndarray:
    """The sorted distinct table rows in ``keyed_rows`` (any shape)."""
    return np.unique(np.asarray(keyed_rows).reshape(-1)).astype(np.int64)


def evaluate_test(
    view: SiloView, shared: dict[str, np.ndarray], private: dict[str, np.ndarray] | None
) -> dict[str, dict[str, float]]:
    """Test metrics (sampled and full) of the silo's model per group, with group sizes under ``n``."""
    model = _model_for(view, shared, private)
    scorer = ModelScorer(model, view.name, view.user_rows, view.catalogue_rows)
    out = {}
    for group, users in view.groups().items():
        result = evaluate(scorer, view.split, view.negatives, users, stage="test")
        out[group] = {**result.metrics, "n": result.num_users}
    return out


MODEL_FILE = "model.npz"


def save_silo_model(folder: Path, state: dict[str, np.ndarray]) -> Path:
    """Write a silo's full model state atomically (temporary file, then rename)."""
    return write_npz_atomic(folder / MODEL_FILE, state)


# ---- segment transfer -----------------------------------------------------------------------------
SEGMENT_MODEL_FILE = "segment_model.npz"
RELEASE = "release"  # the ledger phase of a source's segment release


def _noise_rng(view: SiloView, ledger: PrivacyLedger, *names: str) -> np.random.Generator:
    """DP randomness: fresh OS entropy (noise seed "secret") or the run seed (reproducible runs)."""
    if ledger.noise_seed == "secret":
        return np.random.default_rng(secrets.randbits(128))
    return derive_rng(view.config.seed, view.name, *names)


def release_segments(view: SiloView, ledger: PrivacyLedger) -> tuple[np.ndarray, dict[str, float]]:
    """The source silo's segment release (one value per shopper-table row), recorded in ``ledger``
    (refused with PrivacyError, the refusal recorded, if it would exceed the budget)."""
    config = view.config
    start = time.perf_counter()
    plan = segment_plan(config)
    gaussian = [(plan.noise_multiplier, 1.0, plan.gaussian_steps)] if plan.gaussian_steps else []
    ledger.check_release(phase=RELEASE, round_number=1, gaussian=gaussian, pure=plan.rr_epsilon)
    values = release(view.split, view.user_rows, config.shopper_table_size, plan, _noise_rng(view, ledger, RELEASE))
    if plan.gaussian_steps:
        ledger.record(phase=RELEASE, round_number=1, steps=plan.gaussian_steps,
                      noise_multiplier=plan.noise_multiplier, sample_rate=1.0)
    ledger.record_pure(phase=RELEASE, round_number=2 if plan.gaussian_steps else 1, pure_epsilon=plan.rr_epsilon, values=len(values),
                       choices=plan.segments)
    metrics = {"release-seconds": time.perf_counter() - start, "epsilon": ledger.spent,
               "epsilon-budget": ledger.epsilon_budget, "noise-multiplier": plan.noise_multiplier,
               "rr-epsilon": plan.rr_epsilon, "shoppers": view.split.num_users}
    return values, metrics


def fit_segments(view: SiloView, releases: dict[str, np.ndarray], rr_epsilons: dict[str, float | None],
                 ) -> tuple[SegmentModel, dict[str, dict[str, float]], dict[str, float]]:
    """The target's segment model from the sources' releases (randomized with ``rr_epsilons``, public
    in their ledgers) and its own shoppers; its test metrics per group and fitting metrics (validation
    NDCG@10 of each mixing weight tried)."""
    start = time.perf_counter()
    sources = tuple(sorted(releases))
    missing = [s for s in sources if s not in rr_epsilons]
    if missing:
        raise ValueError(f"no randomized-response ε for the release of {', '.join(missing)}")
    features = target_features({s: releases[s] for s in sources}, view.user_rows, view.config.segments,
                               view.config.shopper_table_size)
    model, val = fit_segment_model(view.split, features, sources, view.config.segments, view.negatives, rr_epsilons)
    scorer = model.scorer(features, has_history(view.split))
    test = {}
    for group, users in view.groups().items():
        result = evaluate(scorer, view.split, view.negatives, users, stage="test")
        test[group] = {**result.metrics, "n": result.num_users}
    metrics = {"fit-seconds": time.perf_counter() - start, "mix-weight/without-history": model.weights[0],
               "mix-weight/with-history": model.weights[1],
               **{f"val-ndcg@10/{group.replace(' ', '-')}/w={w:g}": v for group, by_w in val.items() for w, v in by_w.items()}}
    return model, test, metrics
