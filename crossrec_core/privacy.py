"""Privacy accounting: each silo's ledger of DP steps, the federation-wide figure, and the report.

A silo's **ledger** lists every DP-SGD call the silo made (phase, round, noise multiplier, sample
rate, steps) next to the fixed terms of its guarantee (privacy unit, interactions per shopper,
clipping norm, δ, accountant, budget). ε is always recomputed by the accountant over the whole list,
so composition across rounds and phases is one accountant run over all the steps taken.

The **federation-wide** figure composes the mechanisms of several silos for one shopper who is in
all of them (a shopper's data in each silo is used by that silo's DP steps; the steps of different
silos use independent noise, so their privacy losses compose like steps of one longer run).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from crossrec_core.errors import PrivacyError

PRIVACY_UNIT = "shopper"
ACCOUNTANTS = ("rdp", "prv")
NOISE_SEEDS = ("secret", "run seed")
PRV_EPS_ERROR = 0.01  # the PRV accountant's ε is an upper bound within this of the true value
MAX_COMBINATIONS = 2000  # silo groups enumerated exactly per group size; above, an RDP upper bound

Step = tuple[float, float, int]  # (noise multiplier, sample rate, number of steps)


def epsilon_of(history: Sequence[Step], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of the Poisson-subsampled Gaussian steps in ``history``, composed."""
    from opacus.accountants import create_accountant

    history = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not history:
        return 0.0
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose from {ACCOUNTANTS}")
    if any(s <= 0 for s, _, _ in history):
        return math.inf  # a step without noise has no finite ε
    acc = create_accountant(accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if accountant == "prv":
            return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        return float(acc.get_epsilon(delta=delta))


def rdp_curve(history: Sequence[Step], orders: Sequence[float]) -> np.ndarray:
    """The RDP of ``history`` at each order (sums over steps: RDP composes additively)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    total = np.zeros(len(orders))
    for s, q, n in history:
        if int(n) > 0:
            total += np.asarray(compute_rdp(q=float(q), noise_multiplier=float(s), steps=int(n), orders=list(orders)))
    return total


def epsilon_from_rdp(curve: np.ndarray, orders: Sequence[float], delta: float) -> float:
    from opacus.accountants.analysis.rdp import get_privacy_spent

    eps, _ = get_privacy_spent(orders=list(orders), rdp=curve, delta=delta)
    return float(eps)


def _orders() -> list[float]:
    from opacus.accountants import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


@dataclass
class PrivacyLedger:
    """One silo's DP guarantee and every DP step it took. JSON-serialisable (``as_dict``)."""

    silo: str
    category: str
    epsilon_budget: float
    delta: float
    accountant: str
    max_grad_norm: float
    max_interactions_per_shopper: int
    noise_multiplier: float
    sample_rate: float
    planned_steps: int
    privacy_unit: str = PRIVACY_UNIT
    # where the DP randomness (Poisson sampling, negatives, Gaussian noise) is seeded from: "secret"
    # (fresh OS entropy at the silo, known to nobody) or "run seed" (reproducible by anyone who knows
    # the run's seed, e.g. the server: no guarantee against them)
    noise_seed: str = "run seed"
    entries: list[dict[str, Any]] = field(default_factory=list)  # one per DP training call
    refusals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def history(self) -> list[Step]:
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.entries]

    @property
    def steps(self) -> int:
        return sum(int(e["steps"]) for e in self.entries)

    def epsilon(self, extra_steps: int = 0) -> float:
        """ε over every step taken, plus ``extra_steps`` more of the planned mechanism."""
        history = self.history
        if extra_steps:
            history = history + [(self.noise_multiplier, self.sample_rate, int(extra_steps))]
        return epsilon_of(history, self.delta, self.accountant)

    @property
    def spent(self) -> float:
        return float(self.entries[-1]["epsilon"]) if self.entries else 0.0

    @property
    def remaining(self) -> float:
        return max(0.0, self.epsilon_budget - self.spent)

    def check(self, steps: int, *, phase: str, round_number: int) -> float:
        """The ε after ``steps`` more steps; records a refusal and raises PrivacyError if it would
        exceed the budget."""
        projected = self.epsilon(steps)
        if projected > self.epsilon_budget + 1e-9:
            self.refusals.append({"phase": phase, "round": round_number, "steps": int(steps),
                                  "projected_epsilon": projected, "spent": self.spent})
            raise PrivacyError(
                f"{self.silo}: {steps} more steps would spend ε = {projected:.3f} > budget "
                f"{self.epsilon_budget} (spent {self.spent:.3f}); refusing"
            )
        return projected

    def record(self, *, phase: str, round_number: int, steps: int, noise_multiplier: float, sample_rate: float) -> dict[str, Any]:
        """Add one DP training call and the ε composed over everything so far."""
        entry = {"phase": phase, "round": round_number, "steps": int(steps),
                 "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate)}
        self.entries.append(entry)
        entry["epsilon"] = epsilon_of(self.history, self.delta, self.accountant)
        return entry

    def summary(self) -> dict[str, Any]:
        """The figures a data owner signs off on."""
        return {
            "silo": self.silo,
            "privacy_unit": self.privacy_unit,
            "max_interactions_per_shopper": self.max_interactions_per_shopper,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "max_grad_norm": self.max_grad_norm,
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilon_spent": self.spent,
            "epsilon_budget": self.epsilon_budget,
            "epsilon_remaining": self.remaining,
            "refusals": len(self.refusals),
            "noise_seed": self.noise_seed,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrivacyLedger":
        """A ledger from its JSON form; ValueError naming every field that is missing, of the wrong
        type or out of range (a report must never be computed from values no DP run can have)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a privacy ledger must be an object, got {type(data).__name__}")
        problems: list[str] = []
        where = f"ledger of {data.get('silo')!r}" if isinstance(data.get("silo"), str) else "ledger"
        fields = {
            "silo": _text, "category": _text, "accountant": _choice(ACCOUNTANTS),
            "epsilon_budget": _positive, "delta": _open_unit, "max_grad_norm": _positive,
            "max_interactions_per_shopper": _count(1), "noise_multiplier": _positive,
            "sample_rate": _rate, "planned_steps": _count(0),
        }
        values = {name: _field(data, name, check, where, problems) for name, check in fields.items()}
        entries = _records(data, "entries", {"phase": _text, "round": _count(0), "steps": _count(0),
                                             "noise_multiplier": _positive, "sample_rate": _rate}, where, problems)
        refusals = _records(data, "refusals", {"phase": _text, "round": _count(0), "steps": _count(0),
                                               "projected_epsilon": _non_negative, "spent": _non_negative},
                            where, problems)
        noise_seed = data.get("noise_seed", "run seed")  # reports written before the field: run seed
        if noise_seed not in NOISE_SEEDS:
            problems.append(f"{where}: noise_seed must be one of {', '.join(NOISE_SEEDS)}, got {noise_seed!r}")
        unit = data.get("privacy_unit", PRIVACY_UNIT)
        if not isinstance(unit, str):
            problems.append(f"{where}: privacy_unit must be text, got {unit!r}")
        if problems:
            raise ValueError("; ".join(problems))
        ledger = cls(**values)
        ledger.privacy_unit = unit
        ledger.noise_seed = noise_seed
        ledger.entries, ledger.refusals = entries, refusals
        return ledger

    def recomputed(self) -> "PrivacyLedger":
        """A copy whose per-entry ε are recomputed by the accountant (e.g. when re-rendering a report
        from its JSON: nothing stated is taken on trust). With RDP the curve of each entry is computed
        once and summed, so a ledger of n entries costs n RDP evaluations, not n^2."""
        copy = PrivacyLedger.from_dict(self.as_dict())
        if copy.accountant == "rdp":
            orders = _orders()
            curve = np.zeros(len(orders))
            for e in copy.entries:
                curve = curve + rdp_curve([(e["noise_multiplier"], e["sample_rate"], e["steps"])], orders)
                e["epsilon"] = epsilon_from_rdp(curve, orders, copy.delta) if curve.any() else 0.0
        else:
            for i, e in enumerate(copy.entries):
                e["epsilon"] = epsilon_of(copy.history[: i + 1], copy.delta, copy.accountant)
        return copy


def _number(value: Any) -> float | None:
    """``value`` as a finite float if it is a JSON number (not a bool, not text), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _positive(value: Any) -> float | None:
    v = _number(value)
    return v if v is not None and v > 0 else None


def _non_negative(value: Any) -> float | None:
    v = _number(value)
    return v if v is not None and v >= 0 else None


def _open_unit(value: Any) -> float | None:
    v = _number(value)
    return v if v is not None and 0 < v < 1 else None


def _rate(value: Any) -> float | None:
    v = _number(value)
    return v if v is not None and 0 < v <= 1 else None


def _count(low: int):
    def check(value: Any) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if value >= low else None

    check.__doc__ = f"an integer >= {low}"
    return check


def _choice(options: Sequence[str]):
    def check(value: Any) -> str | None:
        return value if value in options else None

    check.__doc__ = "one of " + ", ".join(options)
    return check


_EXPECTED = {_text: "non-empty text", _positive: "a finite number > 0", _non_negative: "a finite number >= 0",
             _open_unit: "a number strictly between 0 and 1", _rate: "a number in (0, 1]"}


def _field(data: Mapping[str, Any], name: str, check, where: str, problems: list[str]) -> Any:
    if name not in data:
        problems.append(f"{where} lacks {name!r}")
        return None
    value = check(data[name])
    if value is None:
        problems.append(f"{where}: {name} must be {_EXPECTED.get(check) or check.__doc__}, got {data[name]!r}")
    return value


def _records(data: Mapping[str, Any], name: str, fields: dict, where: str, problems: list[str]) -> list[dict[str, Any]]:
    items = data.get(name, [])
    if not isinstance(items, list):
        problems.append(f"{where}: {name} must be a list, got {type(items).__name__}")
        return []
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            problems.append(f"{where}: {name}[{i}] must be an object, got {item!r}")
            continue
        record = dict(item)
        for key, check in fields.items():
            value = _field(item, key, check, f"{where} {name}[{i}]", problems)
            if value is not None:
                record[key] = value
        out.append(record)
    return out


def federation_figure(ledgers: Sequence[PrivacyLedger], delta: float, accountant: str = "rdp") -> dict[str, Any]:
    """The worst-case ε for one shopper in ``k`` silos, for every k, and for a shopper in every silo.

    Silos of one category (merchants) do not share shoppers, so a shopper is in at most one of them:
    a group takes at most one silo per category. For each group size the largest ε over all groups
    is computed exactly when there are at most ``MAX_COMBINATIONS`` groups; above that, an upper
    bound: the sum over the k largest per-category RDP values at each order.
    """
    by_category: dict[str, list[PrivacyLedger]] = {}
    for ledger in ledgers:
        if ledger.entries:
            by_category.setdefault(ledger.category, []).append(ledger)
    categories = sorted(by_category)
    out: dict[str, Any] = {"delta": delta, "accountant": accountant, "by_silo_count": {}}
    orders = _orders()
    curves: dict[int, np.ndarray] = {}

    def curve_of(ledger: PrivacyLedger) -> np.ndarray:
        if id(ledger) not in curves:
            curves[id(ledger)] = rdp_curve(ledger.history, orders)
        return curves[id(ledger)]

    # how many groups of k silos there are (one silo per category): elementary symmetric polynomials
    # of the categories' sizes, so the groups are only listed when there are few enough
    n_groups = [1] + [0] * len(categories)
    for c in categories:
        for k in range(len(categories), 0, -1):
            n_groups[k] += n_groups[k - 1] * len(by_category[c])
    for k in range(1, len(categories) + 1):
        if n_groups[k] <= MAX_COMBINATIONS:
            groups = [combo for cats in itertools.combinations(categories, k)
                      for combo in itertools.product(*(by_category[c] for c in cats))]
            best, worst_group = -1.0, ()
            for group in groups:
                if accountant == "rdp":  # RDP composes by adding curves: each ledger's curve once
                    eps = epsilon_from_rdp(sum(curve_of(ledger) for ledger in group), orders, delta)
                else:
                    eps = epsilon_of([h for ledger in group for h in ledger.history], delta, accountant)
                if eps > best:
                    best, worst_group = eps, group
            out["by_silo_count"][str(k)] = {"epsilon": best, "method": "exact",
                                            "worst_silos": [g.silo for g in worst_group]}
        else:
            per_category = np.stack([
                np.max([curve_of(ledger) for ledger in by_category[c]], axis=0) for c in categories
            ])
            top_k = np.sort(per_category, axis=0)[-k:].sum(axis=0)
            out["by_silo_count"][str(k)] = {"epsilon": epsilon_from_rdp(top_k, orders, delta),
                                            "method": "rdp upper bound", "worst_silos": []}
    counts = out["by_silo_count"]
    out["all_silos"] = counts[str(len(categories))] if categories else {"epsilon": 0.0, "method": "exact", "worst_silos": []}
    return out


def describe_history(entries: Iterable[Mapping[str, Any]]) -> str:
    return ", ".join(f"{e['phase']} {e['round']}: {e['steps']} steps" for e in entries)
