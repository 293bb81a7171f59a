"""The recommender: shared hashed shopper and item tables, silo-private heads and item biases.

score(u, i, silo) = < head_silo(P[h1(u)] + P[h2(u)]), Q[h1(i)] + Q[h2(i)] > + b_silo[h1(i)] + b_silo[h2(i)]

``P`` (shoppers) and ``Q`` (items) are the shared representations; a silo's ``head`` (a d x d linear map
that starts as the identity) and its item ``bias`` table never leave the silo. ``split_state`` is the one
place that decides which tensors are shared.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

SHARED_PREFIXES = ("shopper_table.", "item_table.")
_SILO_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_silo_name(name: str) -> str:
    if not _SILO_NAME.match(name):
        raise ValueError(f"silo name {name!r} may only hold letters, digits, '_' and '-'")
    return name


class CrossRecModel(nn.Module):
    """Hashed two-row embeddings for shoppers and items plus private parts for each silo in ``silos``.

    Each table is called exactly once per forward pass (positives and negatives together), which is
    what Opacus' ghost clipping needs to compute exact per-shopper gradient norms. ``sparse=True``
    gives the tables sparse gradients (fast non-private training); DP training needs ``sparse=False``
    (noise touches every row anyway).
    """

    def __init__(
        self,
        *,
        shopper_rows: int,
        item_rows: int,
        dim: int,
        silos: Iterable[str],
        init_std: float = 0.05,
        seed: int = 0,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        silos = [check_silo_name(s) for s in silos]
        if not silos:
            raise ValueError("a model needs at least one silo")
        gen = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.shopper_table = nn.Embedding(shopper_rows, dim, sparse=sparse)
        self.item_table = nn.Embedding(item_rows, dim, sparse=sparse)
        with torch.no_grad():
            self.shopper_table.weight.normal_(0.0, init_std, generator=gen)
            self.item_table.weight.normal_(0.0, init_std, generator=gen)
        self.heads = nn.ModuleDict()
        self.item_bias = nn.ModuleDict()
        for silo in silos:
            head = nn.Linear(dim, dim)
            with torch.no_grad():
                head.weight.copy_(torch.eye(dim))
                head.bias.zero_()
            self.heads[silo] = head
            bias = nn.Embedding(item_rows, 1, sparse=sparse)
            nn.init.zeros_(bias.weight)
            self.item_bias[silo] = bias

    def train_heads(self, trainable: bool) -> None:
        """Freeze the silo heads at their current value (e.g. the identity during pre-training, so
        every silo reads shoppers in one common space) or let them train (e.g. in fine-tuning)."""
        for head in self.heads.values():
            head.requires_grad_(trainable)

    @property
    def silos(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def forward(
        self, user_rows: torch.Tensor, item_rows: torch.Tensor, silo: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``user_rows [B, 2]``, ``item_rows [B, L, C, 2]`` -> scores ``[B, L, C]`` and the squared
        norms of the shopper vectors ``[B]`` and item vectors ``[B, L, C]`` (for the L2 term)."""
        shopper = self.shopper_table(user_rows).sum(dim=-2)  # [B, d]
        items = self.item_table(item_rows).sum(dim=-2)  # [B, L, C, d]
        bias = self.item_bias[silo](item_rows).sum(dim=(-2, -1))  # [B, L, C]
        user_vec = self.heads[silo](shopper)  # [B, d]
        scores = torch.einsum("bd,blcd->blc", user_vec, items) + bias
        return scores, shopper.pow(2).sum(-1), items.pow(2).sum(-1)

    @torch.no_grad()
    def user_vectors(self, user_rows: torch.Tensor, silo: str) -> torch.Tensor:
        return self.heads[silo](self.shopper_table(user_rows).sum(dim=-2))

    @torch.no_grad()
    def item_vectors(self, item_rows: torch.Tensor, silo: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors ``[I, d]``, biases ``[I]``) of items keyed by ``item_rows [I, 2]``."""
        return self.item_table(item_rows).sum(dim=-2), self.item_bias[silo](item_rows).sum(dim=(-2, -1))


def is_shared(name: str) -> bool:
    """Whether a state-dict entry is a shared representation (may be put in a Flower message)."""
    return name.startswith(SHARED_PREFIXES)


def split_state(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(shared, silo-private) tensors of a model state. Only the shared part ever leaves a silo."""
    shared = {k: v for k, v in state.items() if is_shared(k)}
    private = {k: v for k, v in state.items() if not is_shared(k)}
    return shared, private
