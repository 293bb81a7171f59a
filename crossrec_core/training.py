"""Local training, with or without shopper-level DP-SGD (Opacus, ghost clipping).

Privacy contract (``dp`` given): one DP sample is one *shopper* of the silo, with at most
``max_interactions`` of their most recent training interactions and the negatives drawn for them.
Shoppers are Poisson-sampled with rate ``q = 1 / steps_per_epoch``; each shopper's whole gradient
(all their interactions, their shopper rows, the item rows they touch, the silo's head and biases) is
clipped to ``max_grad_norm`` by Opacus' ghost clipping, which computes exact per-sample norms without
materialising per-sample embedding gradients; Gaussian noise ``noise_multiplier * max_grad_norm`` is added
to every parameter at every step. The accountant composes every step taken; its state can be saved
and restored so ε composes across calls (rounds).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from crossrec_core.errors import PrivacyError, TrainingError
from crossrec_core.model import CrossRecModel
from crossrec_core.splits import SiloSplit, derive_rng

logger = logging.getLogger(__name__)

LossKind = Literal["bpr", "bce"]
AccountantKind = Literal["rdp", "prv"]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings shared by DP and non-DP training."""

    loss: LossKind = "bpr"
    l2: float = 1e-2
    learning_rate: float = 5e-3
    adam_beta1: float = 0.9  # Adam's first-moment decay; 0 = no momentum
    batch_size: int = 256  # expected shoppers per step
    train_negatives: int = 1
    max_interactions: int = 20


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD settings. ``noise_multiplier`` comes from ``calibrate_noise`` for the whole plan."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: AccountantKind = "rdp"


@dataclass
class TrainReport:
    """What one call of ``train`` did."""

    steps: int
    epochs: float
    interactions: int  # real (unpadded) interactions processed
    seconds: float
    mean_loss: float
    epsilon: float | None = None  # ε spent so far (all steps in the accountant), at ``delta``
    accountant_state: dict[str, Any] | None = None
    sample_rate: float | None = None
    epoch_metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return self.interactions / self.seconds if self.seconds > 0 else float("nan")


class ShopperData:
    """A silo's training data as one padded row per shopper (the DP sample), with hashed rows.

    ``user_rows [S, 2]`` and ``catalogue_rows [I, 2]`` are table rows from keying; the items of each
    shopper are their ``max_interactions`` most recent training items (local indices).
    """

    def __init__(
        self,
        split: SiloSplit,
        *,
        user_rows: np.ndarray,
        catalogue_rows: np.ndarray,
        max_interactions: int,
    ) -> None:
        if len(user_rows) != split.num_users or len(catalogue_rows) != split.num_items:
            raise ValueError("user_rows / catalogue_rows do not match the split")
        self.silo = split.name
        shoppers, counts = np.unique(split.train_user, return_counts=True)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        L = max(1, min(max_interactions, int(counts.max()) if len(counts) else 1))
        items = np.zeros((len(shoppers), L), dtype=np.int64)
        weight = np.zeros((len(shoppers), L), dtype=np.float32)
        for s in range(len(shoppers)):
            lo = max(bounds[s], bounds[s + 1] - L)
            n = bounds[s + 1] - lo
            items[s, :n] = split.train_item[lo : bounds[s + 1]]
            weight[s, :n] = split.train_weight[lo : bounds[s + 1]]
        self.shoppers = shoppers  # local user index of each DP sample
        self.items = torch.from_numpy(items)
        self.weight = torch.from_numpy(weight)  # 0 marks padding
        self.user_rows = torch.from_numpy(user_rows[shoppers])
        self.catalogue_rows = torch.from_numpy(catalogue_rows)
        self.num_items = split.num_items

    def __len__(self) -> int:
        return len(self.shoppers)

    @property
    def num_interactions(self) -> int:
        return int((self.weight > 0).sum())

    def batch(self, index: torch.Tensor, negatives: int, generator: torch.Generator):
        """Model inputs and loss targets for the shoppers ``index`` with fresh uniform negatives."""
        items = self.items[index]  # [B, L]
        neg = torch.randint(0, self.num_items, (*items.shape, negatives), generator=generator)
        candidates = torch.cat([items[..., None], neg], dim=-1)  # [B, L, 1 + K]
        return (self.user_rows[index], self.catalogue_rows[candidates]), self.weight[index]


class ShopperLoss(nn.Module):
    """Per-shopper loss: weighted sum over the shopper's interactions of BPR (or BCE) against their
    negatives, plus ``l2`` times the squared norms of the vectors involved. ``reduction`` is over
    shoppers, as Opacus expects of a criterion."""

    def __init__(self, kind: LossKind = "bpr", l2: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if kind not in ("bpr", "bce"):
            raise ValueError(f"unknown loss {kind!r}")
        self.kind, self.l2, self.reduction = kind, l2, reduction

    def forward(self, output: tuple[torch.Tensor, ...], weight: torch.Tensor) -> torch.Tensor:
        scores, user_sq, item_sq = output
        pos, neg = scores[..., :1], scores[..., 1:]
        if self.kind == "bpr":
            per_interaction = nn.functional.softplus(neg - pos).mean(-1)
        else:
            per_interaction = nn.functional.softplus(-pos[..., 0]) + nn.functional.softplus(neg).mean(-1)
        present = (weight > 0).to(scores.dtype)
        per_shopper = (weight * per_interaction).sum(-1)
        if self.l2:
            per_shopper = per_shopper + self.l2 * (user_sq + (present[..., None] * item_sq).sum((-2, -1)))
        if self.reduction == "none":
            return per_shopper
        if self.reduction == "sum":
            return per_shopper.sum()
        return per_shopper.mean()


def steps_per_epoch(num_shoppers: int, batch_size: int) -> int:
    """Steps in one expected pass over the shoppers; the DP sample rate is its inverse."""
    return max(1, round(num_shoppers / batch_size))


MAX_NOISE_MULTIPLIER = 1e6  # beyond this no useful training is possible: the budget is too small


def calibrate_noise(
    *, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: AccountantKind = "rdp",
    tolerance: float = 0.005,
) -> float:
    """The smallest noise multiplier (within ``tolerance`` in ε) for which ``steps`` Poisson-subsampled
    Gaussian steps at ``sample_rate`` spend at most ``epsilon`` at ``delta``.

    Bisection on σ between a bracket found by doubling and halving from σ = 1, so the accountant is
    never asked about noise far below the answer (where it is slowest). The σ returned always
    satisfies ε(σ) <= ``epsilon`` by the accountant."""
    from crossrec_core.privacy import epsilon_of

    if steps < 1:
        raise PrivacyError(f"a DP plan needs at least one step, got {steps}")
    if not (epsilon > 0 and 0 < delta < 1 and 0 < sample_rate <= 1):
        raise PrivacyError(f"cannot plan DP with ε = {epsilon}, δ = {delta}, sample rate {sample_rate}")

    def eps(sigma: float) -> float:
        return epsilon_of([(sigma, sample_rate, steps)], delta, accountant)

    # ε falls as σ grows, roughly as a power of σ. Find a bracket [low, high] with
    # ε(low) > epsilon >= ε(high), stepping down by log-log extrapolation so the accountant is
    # seldom asked about noise far below the answer (where it is slowest).
    high, eps_high = 1.0, eps(1.0)
    while eps_high > epsilon:
        high *= 2.0
        if high > MAX_NOISE_MULTIPLIER:
            raise PrivacyError(
                f"cannot meet ε = {epsilon} at δ = {delta} with {steps} steps at sample rate {sample_rate:.4g}: "
                f"even noise multiplier {MAX_NOISE_MULTIPLIER:g} spends more (the budget is too small for any "
                "useful noise level; raise epsilon-budget or plan fewer steps)"
            )
        eps_high = eps(high)
    other, eps_other = high * 2.0, eps(high * 2.0)
    while True:
        slope = math.log(max(eps_high, 1e-300) / max(eps_other, 1e-300)) / math.log(other / high)
        guess = high * (eps_high / epsilon) ** (1.0 / max(slope, 0.5))
        low = min(guess * 0.97, high * 0.999)
        eps_low = eps(low)
        if eps_low > epsilon:
            break
        other, eps_other, high, eps_high = high, eps_high, low, eps_low
    while epsilon - eps_high > tolerance and high - low > 1e-6 * high:
        mid = (low + high) / 2.0
        e = eps(mid)
        if e <= epsilon:
            high, eps_high = mid, e
        else:
            low = mid
    return float(high)


def make_accountant(kind: AccountantKind, state: dict[str, Any] | None = None):
    from opacus.accountants import create_accountant

    accountant = create_accountant(kind)
    if state is not None:
        accountant.load_state_dict({"history": [tuple(h) for h in state["history"]], "mechanism": kind})
    return accountant


def accountant_state(accountant) -> dict[str, Any]:
    """JSON-friendly accountant state: the list of (noise multiplier, sample rate, steps)."""
    return {"mechanism": accountant.mechanism(), "history": [list(map(float, h[:2])) + [int(h[2])] for h in accountant.history]}


def embedding_norm_sample(layer: nn.Embedding, activations: list[torch.Tensor], backprops: torch.Tensor):
    """Exact per-sample gradient norms of an ``nn.Embedding`` (Opacus ghost clipping's norm sampler).

    Sample b's gradient puts, on each row it looked up, the sum of the output gradients of the
    positions that looked it up; its squared norm is the sum over its distinct rows of that sum's
    squared norm. The same result as Opacus' own sampler, but each (sample, row) pair is one int64
    key, which ``torch.unique`` sorts several times faster than Opacus' rows of pairs."""
    ids = activations[0].reshape(activations[0].shape[0], -1)
    grads = backprops.reshape(-1, backprops.shape[-1])
    batch, rows = ids.shape[0], layer.num_embeddings
    keys = torch.arange(batch, device=ids.device).repeat_interleave(ids.shape[1]) * rows + ids.reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    summed = torch.zeros(len(unique), grads.shape[-1], dtype=grads.dtype, device=grads.device).index_add_(0, inverse, grads)
    squared = torch.zeros(batch, dtype=grads.dtype, device=grads.device)
    squared.scatter_add_(0, unique // rows, summed.pow(2).sum(dim=1))
    return {layer.weight: squared.sqrt()}


def _use_fast_embedding_norms() -> None:
    from opacus.grad_sample.utils import register_norm_sampler

    register_norm_sampler(nn.Embedding)(embedding_norm_sample)


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate_indices(batch: list[int]) -> torch.Tensor:
    return torch.tensor(batch, dtype=torch.long)


def train(
    model: CrossRecModel,
    data: ShopperData | Sequence[ShopperData],
    *,
    settings: TrainSettings,
    epochs: float,
    seed: int,
    dp: DPSettings | None = None,
    accountant_state_in: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int], dict[str, float] | None] | None = None,
    progress: bool = True,
) -> TrainReport:
    """Train ``model`` in place for ``epochs`` passes over its shoppers.

    With ``dp``, ``data`` must be a single silo's ShopperData; the accountant is restored from
    ``accountant_state_in`` (if any) and the report carries the ε spent over all steps so far.
    Without ``dp``, several silos' data may be given: batches of each silo are interleaved at random.
    """
    datas = [data] if isinstance(data, ShopperData) else list(data)
    if not datas or any(len(d) == 0 for d in datas):
        raise TrainingError("nothing to train on: a silo has no shopper with training interactions")
    if dp is not None and len(datas) != 1:
        raise TrainingError("DP training takes one silo's data at a time (the privacy unit is per silo)")
    if dp is not None and any(isinstance(m, nn.Embedding) and m.sparse for m in model.modules()):
        raise TrainingError("DP training needs a model with dense tables (sparse=False)")
    criterion = ShopperLoss(settings.loss, settings.l2)
    optimizer = _optimizer(model, settings.learning_rate, settings.adam_beta1)
    torch_gen = torch.Generator().manual_seed(int(derive_rng(seed, *(d.silo for d in datas), "train").integers(2**62)))
    if dp is not None:
        return _train_dp(model, datas[0], criterion, optimizer, settings, epochs, dp, accountant_state_in, torch_gen, on_epoch_end, progress)
    return _train_plain(model, datas, criterion, optimizer, settings, epochs, torch_gen, on_epoch_end, progress)


class _Optimizers:
    """Adam for dense parameters plus SparseAdam for sparse embedding tables, stepped together."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        self.parts = parts

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parts:
            p.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for p in self.parts:
            p.step()


def _optimizer(model: nn.Module, lr: float, beta1: float = 0.9):
    sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse and m.weight.requires_grad]
    ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    parts = []
    if dense:
        # fused: one kernel per step instead of a pass per operation (8x faster on a 25M-value table)
        parts.append(torch.optim.Adam(dense, lr=lr, betas=(beta1, 0.999), fused=True))
    if sparse:
        parts.append(torch.optim.SparseAdam(sparse, lr=lr, betas=(beta1, 0.999)))
    if not parts:
        raise TrainingError("the model has no trainable parameters")
    return parts[0] if len(parts) == 1 and not sparse else _Optimizers(parts)


def _step_inputs(data: ShopperData, index: torch.Tensor, settings: TrainSettings, gen: torch.Generator):
    (user_rows, item_rows), weight = data.batch(index, settings.train_negatives, gen)
    return user_rows, item_rows, weight


def _check_loss(loss_value: float, step: int) -> None:
    if not math.isfinite(loss_value):
        raise TrainingError(f"loss became {loss_value} at step {step}; lower the learning rate")


def _train_plain(model, datas, criterion, optimizer, settings, epochs, gen, on_epoch_end, progress) -> TrainReport:
    model.train()
    steps = interactions = 0
    loss_sum = 0.0
    metrics: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(math.ceil(epochs)):
        share = min(1.0, epochs - epoch)
        schedule = []
        for d_i, d in enumerate(datas):
            perm = torch.randperm(len(d), generator=gen)[: max(1, int(share * len(d)))]
            schedule += [(d_i, chunk) for chunk in torch.split(perm, settings.batch_size)]
        order = torch.randperm(len(schedule), generator=gen).tolist()
        for j in order:
            d_i, index = schedule[j]
            user_rows, item_rows, weight = _step_inputs(datas[d_i], index, settings, gen)
            loss = criterion(model(user_rows, item_rows, datas[d_i].silo), weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            interactions += int((weight > 0).sum())
            loss_sum += float(loss.detach())
            _check_loss(float(loss.detach()), steps)
        metrics.append(_end_epoch(epoch, steps, loss_sum, start, on_epoch_end, progress))
    return TrainReport(steps, epochs, interactions, time.perf_counter() - start, loss_sum / max(steps, 1), epoch_metrics=metrics)


def _end_epoch(epoch, steps, loss_sum, start, on_epoch_end, progress) -> dict[str, float]:
    record = {"epoch": epoch + 1, "loss": loss_sum / max(steps, 1), "seconds": time.perf_counter() - start}
    if on_epoch_end is not None:
        record.update(on_epoch_end(epoch + 1) or {})
    if progress:
        logger.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
    return record


def _train_dp(model, data, criterion, optimizer, settings, epochs, dp, state_in, gen, on_epoch_end, progress) -> TrainReport:
    from opacus import PrivacyEngine
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    n_per_epoch = steps_per_epoch(len(data), settings.batch_size)
    sample_rate = 1.0 / n_per_epoch
    total_steps = max(1, round(epochs * n_per_epoch))
    sampler = UniformWithReplacementSampler(num_samples=len(data), sample_rate=sample_rate, generator=gen)
    loader = torch.utils.data.DataLoader(_Indices(len(data)), batch_sampler=sampler, collate_fn=_collate_indices)
    if not math.isclose(1.0 / len(loader), sample_rate):
        raise TrainingError(f"internal: loader length {len(loader)} does not match sample rate {sample_rate}")
    _use_fast_embedding_norms()
    engine = PrivacyEngine(accountant=dp.accountant)
    if state_in is not None:
        engine.accountant = make_accountant(dp.accountant, state_in)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*full_backward_hook.*")
        dp_model, dp_optimizer, dp_criterion, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,  # the sampler above already is Poisson, with our seeded generator
            grad_sample_mode="ghost",
            noise_generator=gen,
        )
    dp_model.train()
    steps = interactions = empty = 0
    loss_sum = 0.0
    metrics: list[dict[str, float]] = []
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus, harmless here
            while steps < total_steps:
                for index in dp_loader:
                    if steps >= total_steps:
                        break
                    steps += 1
                    if len(index) == 0:
                        # Probability exp(-expected batch); the accountant still counts this step.
                        engine.accountant.step(noise_multiplier=dp.noise_multiplier, sample_rate=sample_rate)
                        empty += 1
                        continue
                    user_rows, item_rows, weight = _step_inputs(data, index, settings, gen)
                    loss = dp_criterion(dp_model(user_rows, item_rows, data.silo), weight)
                    dp_optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    dp_optimizer.step()
                    interactions += int((weight > 0).sum())
                    loss_sum += float(loss.item())
                    _check_loss(float(loss.item()), steps)
                    if steps % n_per_epoch == 0:
                        metrics.append(_end_epoch(steps // n_per_epoch - 1, steps, loss_sum, start, on_epoch_end, progress))
    finally:
        _detach(dp_model)
    if empty:
        logger.warning("%s: %d empty Poisson batch(es) (counted by the accountant)", data.silo, empty)
    epsilon = float(engine.accountant.get_epsilon(delta=dp.delta))
    return TrainReport(
        steps,
        epochs,
        interactions,
        time.perf_counter() - start,
        loss_sum / max(steps, 1),
        epsilon=epsilon,
        accountant_state=accountant_state(engine.accountant),
        sample_rate=sample_rate,
        epoch_metrics=metrics,
    )


def _detach(dp_model) -> None:
    """Remove Opacus' hooks and per-sample buffers so the plain model can be used again."""
    dp_model.remove_hooks() if hasattr(dp_model, "remove_hooks") else None
    for p in dp_model.parameters():
        for attr in ("grad_sample", "_forward_counter", "_norm_sample", "summed_grad"):
            if hasattr(p, attr):
                try:
                    delattr(p, attr)
                except AttributeError:
                    pass
        p.grad = None


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
