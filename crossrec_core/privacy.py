"""Privacy accounting: each silo's ledger of DP steps, the federation-wide figure, and the report.

A silo's **ledger** lists every DP mechanism the silo ran next to the fixed terms of its guarantee
(privacy unit, interactions per shopper, clipping norm, δ, accountant, budget): Gaussian mechanisms
(DP-SGD calls and one-shot Gaussian releases: phase, round, noise multiplier, sample rate, steps) and
pure ε-DP releases (randomized response: its ε). ε is always recomputed over the whole list: the
accountant composes every Gaussian step at δ, and the pure ε of the other releases is added to it
(basic composition), so composition across rounds and phases covers every step taken.

The **federation-wide** figure composes the mechanisms of several silos for one shopper who is in
all of them (a shopper's data in each silo is used by that silo's DP steps; the steps of different
silos use independent noise, so their privacy losses compose like steps of one longer run).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
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
GAUSSIAN = "gaussian"
RANDOMIZED_RESPONSE = "randomized-response"
MECHANISMS = (GAUSSIAN, RANDOMIZED_RESPONSE)


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
    planned_pure_epsilon: float = 0.0  # pure ε planned for releases (randomized response)
    entries: list[dict[str, Any]] = field(default_factory=list)  # one per DP mechanism run
    refusals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def history(self) -> list[Step]:
        """The Gaussian steps taken (what the accountant composes)."""
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.entries if mechanism_of(e) == GAUSSIAN]

    @property
    def pure_epsilon(self) -> float:
        """The summed ε of the pure ε-DP releases taken."""
        return sum(float(e["pure_epsilon"]) for e in self.entries if mechanism_of(e) == RANDOMIZED_RESPONSE)

    @property
    def steps(self) -> int:
        return sum(int(s) for _, _, s in self.history)

    def epsilon(self, extra_steps: int = 0, extra_pure: float = 0.0, *, extra: Sequence[Step] = ()) -> float:
        """ε over every mechanism run, plus ``extra_steps`` more of the planned Gaussian step, the
        Gaussian steps ``extra`` and ``extra_pure`` more pure ε."""
        history = self.history + [tuple(x) for x in extra]
        if extra_steps:
            history = history + [(self.noise_multiplier, self.sample_rate, int(extra_steps))]
        return epsilon_of(history, self.delta, self.accountant) + self.pure_epsilon + float(extra_pure)

    @property
    def spent(self) -> float:
        return float(self.entries[-1]["epsilon"]) if self.entries else 0.0

    @property
    def remaining(self) -> float:
        return max(0.0, self.epsilon_budget - self.spent)

    def check(self, steps: int, *, phase: str, round_number: int) -> float:
        """The ε after ``steps`` more steps; records a refusal and raises PrivacyError if it would
        exceed the budget."""
        return self._within_budget(self.epsilon(steps), phase=phase, round_number=round_number, steps=steps,
                                   what=f"{steps} more steps")

    def check_release(self, *, phase: str, round_number: int, gaussian: Sequence[Step], pure: float) -> float:
        """Like ``check`` for a release of Gaussian steps ``gaussian`` and pure ``pure`` ε."""
        return self._within_budget(self.epsilon(extra=gaussian, extra_pure=pure), phase=phase,
                                   round_number=round_number, steps=sum(int(n) for _, _, n in gaussian),
                                   what=f"the {phase}")

    def _within_budget(self, projected: float, *, phase: str, round_number: int, steps: int, what: str) -> float:
        """``projected`` if within the budget; else the refusal is recorded and PrivacyError raised."""
        if projected > self.epsilon_budget + 1e-9:
            self.refusals.append({"phase": phase, "round": round_number, "steps": int(steps),
                                  "projected_epsilon": projected, "spent": self.spent})
            raise PrivacyError(
                f"{self.silo}: {what} would spend ε = {projected:.3f} > budget "
                f"{self.epsilon_budget} (spent {self.spent:.3f}); refusing"
            )
        return projected

    def record(self, *, phase: str, round_number: int, steps: int, noise_multiplier: float, sample_rate: float) -> dict[str, Any]:
        """Add one Gaussian mechanism (a DP training call, a Gaussian release) and the ε composed over
        everything so far."""
        entry = {"phase": phase, "round": round_number, "steps": int(steps),
                 "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate)}
        self.entries.append(entry)
        entry["epsilon"] = self.epsilon()
        return entry

    def record_pure(self, *, phase: str, round_number: int, pure_epsilon: float, values: int, choices: int) -> dict[str, Any]:
        """Add one randomized-response release (``values`` values, each ``pure_epsilon``-DP; a shopper
        changes at most one of them) and the ε composed over everything so far."""
        entry = {"phase": phase, "round": round_number, "mechanism": RANDOMIZED_RESPONSE,
                 "pure_epsilon": float(pure_epsilon), "values": int(values), "choices": int(choices)}
        self.entries.append(entry)
        entry["epsilon"] = self.epsilon()
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
            "pure_epsilon": self.pure_epsilon,
            "planned_pure_epsilon": self.planned_pure_epsilon,
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
        where = f"ledger of {data.get('silo')!r}" if isinstance(data.get("silo"), str) else "ledger"
        data = {"privacy_unit": PRIVACY_UNIT, "noise_seed": "run seed", "planned_pure_epsilon": 0.0, "entries": [],
                "refusals": [], **data}
        problems = _record_problems(data, LEDGER_FIELDS, where)
        records = {}
        for name, fields in (("entries", ENTRY_FIELDS), ("refusals", REFUSAL_FIELDS)):
            items = data[name]
            if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
                problems.append(f"{where}: {name} must be a list of objects")
                continue
            for i, item in enumerate(items):
                kind = fields
                if name == "entries":
                    mechanism = item.get("mechanism", GAUSSIAN)
                    if mechanism not in MECHANISMS:
                        problems.append(f"{where} entries[{i}]: mechanism must be one of {', '.join(MECHANISMS)}, "
                                        f"got {mechanism!r}")
                        continue
                    kind = ENTRY_FIELDS if mechanism == GAUSSIAN else PURE_ENTRY_FIELDS
                problems += _record_problems(item, kind, f"{where} {name}[{i}]")
            records[name] = [dict(item) for item in items]
        if problems:
            raise ValueError("; ".join(problems))
        ledger = cls(**{name: data[name] for name in LEDGER_FIELDS})
        ledger.entries, ledger.refusals = records["entries"], records["refusals"]
        return ledger

    def recomputed(self) -> "PrivacyLedger":
        """A copy whose per-entry ε are recomputed by the accountant (e.g. when re-rendering a report
        from its JSON: nothing stated is taken on trust). With RDP the curve of each entry is computed
        once and summed, so a ledger of n entries costs n RDP evaluations, not n^2."""
        copy = PrivacyLedger.from_dict(self.as_dict())
        orders = _orders()
        curve = np.zeros(len(orders))
        history: list[Step] = []
        pure = 0.0
        gaussian_eps = 0.0
        for e in copy.entries:
            if mechanism_of(e) == RANDOMIZED_RESPONSE:
                pure += float(e["pure_epsilon"])
            else:
                step = (e["noise_multiplier"], e["sample_rate"], e["steps"])
                if copy.accountant == "rdp":
                    curve = curve + rdp_curve([step], orders)
                    gaussian_eps = epsilon_from_rdp(curve, orders, copy.delta) if curve.any() else 0.0
                else:
                    history.append(step)
                    gaussian_eps = epsilon_of(history, copy.delta, copy.accountant)
            e["epsilon"] = gaussian_eps + pure
        return copy


def _finite(value: Any) -> float | None:
    """``value`` as a finite float if it is a JSON number (not a bool, not text), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _integer_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


# kinds of ledger field: (what is expected, in words; the test)
FIELD_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "text": ("non-empty text", lambda v: isinstance(v, str) and v != ""),
    "positive": ("a finite number > 0", lambda v: (f := _finite(v)) is not None and f > 0),
    "non-negative": ("a finite number >= 0", lambda v: (f := _finite(v)) is not None and f >= 0),
    "delta": ("a number strictly between 0 and 1", lambda v: (f := _finite(v)) is not None and 0 < f < 1),
    "rate": ("a number in (0, 1]", lambda v: (f := _finite(v)) is not None and 0 < f <= 1),
    "count": ("an integer >= 0", _integer_at_least(0)),
    "positive count": ("an integer >= 1", _integer_at_least(1)),
    "choices": ("an integer >= 2", _integer_at_least(2)),
    "accountant": ("one of " + ", ".join(ACCOUNTANTS), lambda v: v in ACCOUNTANTS),
    "noise seed": ("one of " + ", ".join(NOISE_SEEDS), lambda v: v in NOISE_SEEDS),
}
LEDGER_FIELDS = {
    "silo": "text", "category": "text", "epsilon_budget": "positive", "delta": "delta", "accountant": "accountant",
    "max_grad_norm": "positive", "max_interactions_per_shopper": "positive count", "noise_multiplier": "non-negative",
    "sample_rate": "rate", "planned_steps": "count", "privacy_unit": "text", "noise_seed": "noise seed",
    "planned_pure_epsilon": "non-negative",
}
ENTRY_FIELDS = {"phase": "text", "round": "count", "steps": "count", "noise_multiplier": "positive", "sample_rate": "rate"}
PURE_ENTRY_FIELDS = {"phase": "text", "round": "count", "pure_epsilon": "positive", "values": "positive count",
                     "choices": "choices"}


def mechanism_of(entry: Mapping[str, Any]) -> str:
    """The mechanism of a ledger entry (entries without one are Gaussian: DP-SGD calls)."""
    return str(entry.get("mechanism", GAUSSIAN))
REFUSAL_FIELDS = {"phase": "text", "round": "count", "steps": "count", "projected_epsilon": "non-negative",
                  "spent": "non-negative"}


def field_problem(name: str, value: Any, kind: str) -> str | None:
    """None if ``value`` is of ``kind`` (one of ``FIELD_KINDS``), else what is wrong with it."""
    expected, ok = FIELD_KINDS[kind]
    return None if ok(value) else f"{name} must be {expected}, got {value!r}"


def _record_problems(record: Mapping[str, Any], fields: Mapping[str, str], where: str) -> list[str]:
    problems = []
    for name, kind in fields.items():
        if name not in record:
            problems.append(f"{where} lacks {name!r}")
        elif (problem := field_problem(name, record[name], kind)) is not None:
            problems.append(f"{where}: {problem}")
    return problems


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

    def gaussian_epsilon(curve: np.ndarray) -> float:
        return epsilon_from_rdp(curve, orders, delta) if curve.any() else 0.0

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
                    eps = gaussian_epsilon(sum(curve_of(ledger) for ledger in group))
                else:
                    eps = epsilon_of([h for ledger in group for h in ledger.history], delta, accountant)
                eps += sum(ledger.pure_epsilon for ledger in group)
                if eps > best:
                    best, worst_group = eps, group
            out["by_silo_count"][str(k)] = {"epsilon": best, "method": "exact",
                                            "worst_silos": [g.silo for g in worst_group]}
        else:
            per_category = np.stack([
                np.max([curve_of(ledger) for ledger in by_category[c]], axis=0) for c in categories
            ])
            top_k = np.sort(per_category, axis=0)[-k:].sum(axis=0)
            pure = sorted(max(ledger.pure_epsilon for ledger in by_category[c]) for c in categories)[-k:]
            out["by_silo_count"][str(k)] = {"epsilon": gaussian_epsilon(top_k) + sum(pure),
                                            "method": "rdp upper bound", "worst_silos": []}
    counts = out["by_silo_count"]
    out["all_silos"] = counts[str(len(categories))] if categories else {"epsilon": 0.0, "method": "exact", "worst_silos": []}
    return out


def describe_entry(e: Mapping[str, Any]) -> str:
    if mechanism_of(e) == RANDOMIZED_RESPONSE:
        return f"{e['phase']} {e['round']}: randomized response, {e['values']} values of {e['choices']}, ε {e['pure_epsilon']:.3f} each"
    return f"{e['phase']} {e['round']}: {e['steps']} steps"


def describe_history(entries: Iterable[Mapping[str, Any]]) -> str:
    return ", ".join(describe_entry(e) for e in entries)
