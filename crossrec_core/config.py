"""The run configuration: Flower's ``run_config``, read once into a typed, frozen object.

The defaults in ``pyproject.toml`` (``[tool.flwr.app.config]``) are the schema's values; this module
declares the types and the allowed ranges. ``RunConfig.from_mapping`` rejects unknown keys, wrong
types and out-of-range values with one error that names every offending key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from crossrec_core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = PROJECT_ROOT / "pyproject.toml"

LOSSES = ("bpr", "bce")
AGGREGATIONS = ("row-mean", "sum", "fedavg")
HEAD_MODES = ("finetune", "always", "never")
ACCOUNTANTS = ("rdp", "prv")
PRIVATE_TRANSFERS = ("segments", "dp-sgd")


def _check(predicate: Callable[[Any], bool], expected: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if predicate(value) else expected

    return check


def _finite(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """``check``, after rejecting inf and nan (an infinite budget or step count is never meant)."""
    return lambda v: check(v) if isinstance(v, int) or math.isfinite(v) else "must be a finite number"


_positive = _finite(_check(lambda v: v > 0, "must be > 0"))
_non_negative = _finite(_check(lambda v: v >= 0, "must be >= 0"))
_fraction = _check(lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1")
_open_fraction = _check(lambda v: 0.0 < v < 1.0, "must be strictly between 0 and 1")
_beta = _check(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
_non_empty = _check(lambda v: bool(str(v).strip()), "must not be empty")


def _key(name: str, kind: type, check: Callable[[Any], str | None] | None = None) -> Any:
    return field(metadata={"key": name, "kind": kind, "check": check})


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a crossrec run. Keys are the kebab-case names used in ``run_config``."""

    data_dir: str = _key("data-dir", str, _non_empty)
    silos: str = _key("silos", str, _non_empty)
    target: str = _key("target", str, _non_empty)
    cold_start_fraction: float = _key("cold-start-fraction", float, _fraction)
    seed: int = _key("seed", int, _check(lambda v: 0 <= v < 2**63, "must be between 0 and 2**63 - 1"))
    federation_key: str = _key("federation-key", str, _non_empty)
    shopper_table_size: int = _key("shopper-table-size", int, _positive)
    item_table_size: int = _key("item-table-size", int, _positive)
    embedding_dim: int = _key("embedding-dim", int, _positive)
    head: str = _key("head", str, _check(lambda v: v in HEAD_MODES, f"must be one of {HEAD_MODES}"))
    max_interactions_per_shopper: int = _key("max-interactions-per-shopper", int, _positive)
    event_weights: str = _key("event-weights", str)
    eval_negatives: int = _key("eval-negatives", int, _positive)
    loss: str = _key("loss", str, _check(lambda v: v in LOSSES, f"must be one of {LOSSES}"))
    train_negatives: int = _key("train-negatives", int, _positive)
    learning_rate: float = _key("learning-rate", float, _positive)
    adam_beta1: float = _key("adam-beta1", float, _beta)
    dp_adam_beta1: float = _key("dp-adam-beta1", float, _beta)
    l2: float = _key("l2", float, _non_negative)
    batch_size: int = _key("batch-size", int, _positive)
    dp_batch_size: int = _key("dp-batch-size", int, _positive)
    epochs: int = _key("epochs", int, _positive)
    dp: bool = _key("dp", bool)
    epsilon_budget: float = _key("epsilon-budget", float, _positive)
    delta: float = _key("delta", float, _open_fraction)
    max_grad_norm: float = _key("max-grad-norm", float, _positive)
    accountant: str = _key(
        "accountant", str, _check(lambda v: v in ACCOUNTANTS, f"must be one of {ACCOUNTANTS}")
    )
    output_dir: str = _key("output-dir", str, _non_empty)
    num_server_rounds: int = _key("num-server-rounds", int, _positive)
    local_epochs: float = _key("local-epochs", float, _positive)
    finetune_epochs: float = _key("finetune-epochs", float, _non_negative)
    min_silos: int = _key("min-silos", int, _positive)
    merchants_per_category: int = _key("merchants-per-category", int, _positive)
    aggregation: str = _key(
        "aggregation", str, _check(lambda v: v in AGGREGATIONS, f"must be one of {AGGREGATIONS}")
    )
    run_dir: str = _key("run-dir", str)
    round_timeout: float = _key("round-timeout", float, _positive)
    secure_noise: bool = _key("secure-noise", bool)
    private_transfer: str = _key(
        "private-transfer", str, _check(lambda v: v in PRIVATE_TRANSFERS, f"must be one of {PRIVATE_TRANSFERS}")
    )
    segments: int = _key("segments", int, _check(lambda v: 2 <= v <= 256, "must be between 2 and 256"))
    segment_top_items: int = _key("segment-top-items", int, _check(lambda v: 1 <= v <= 4096, "must be between 1 and 4096"))
    segment_kmeans_iters: int = _key("segment-kmeans-iters", int, _check(lambda v: 0 <= v <= 100, "must be between 0 and 100"))
    segment_gaussian_share: float = _key("segment-gaussian-share", float, _open_fraction)

    # ---- derived views -------------------------------------------------------------------
    @property
    def segment_transfer(self) -> bool:
        """The DP run releases segments (``private-transfer = "segments"``) instead of DP-SGD updates."""
        return self.dp and self.private_transfer == "segments"

    @property
    def silo_names(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.silos.split(",") if s.strip())

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(s for s in self.silo_names if s != self.target)

    @property
    def node_silos(self) -> tuple[str, ...]:
        """The silo of every node: each category, or each merchant of each category."""
        m = self.merchants_per_category
        return tuple(c if m == 1 else f"{c}-{j + 1}" for c in self.silo_names for j in range(m))

    @property
    def event_weight_map(self) -> dict[str, float]:
        return parse_event_weights(self.event_weights)

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case mapping, as Flower's run_config holds it."""
        return {f.metadata["key"]: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **overrides: Any) -> "RunConfig":
        """A copy with kebab- or snake-case keys replaced, validated like any other input."""
        mapping = self.to_run_config()
        for k, v in overrides.items():
            mapping[k.replace("_", "-")] = v
        return RunConfig.from_mapping(mapping)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "RunConfig":
        """Validate a complete run_config mapping; raise ConfigError naming every bad key."""
        problems: list[str] = []
        by_key = {f.metadata["key"]: f for f in dataclasses.fields(cls)}
        for key in sorted(set(mapping) - set(by_key)):
            problems.append(f"{key!r}: unknown key (known keys: {', '.join(sorted(by_key))})")
        values: dict[str, Any] = {}
        bad: set[str] = set()  # keys with a problem of their own: cross-checks skip them
        for key, f in by_key.items():
            if key not in mapping:
                problems.append(f"{key!r}: missing")
                bad.add(key)
                continue
            value, problem = _coerce(mapping[key], f.metadata["kind"])
            if problem is None and f.metadata["check"] is not None:
                problem = f.metadata["check"](value)
            if problem is not None:
                problems.append(f"{key!r} = {mapping[key]!r}: {problem}")
                bad.add(key)
            values[f.name] = value
        problems.extend(_cross_checks(values, bad))
        if problems:
            raise ConfigError("invalid run config:", problems)
        return cls(**values)


def _coerce(value: Any, kind: type) -> tuple[Any, str | None]:
    if kind is bool:
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true", None
        return value, "must be true or false"
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value), None
            return value, "must be an integer"
        return value, None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, "must be a number"
        try:
            return float(value), None
        except OverflowError:
            return value, "is too large for a number"
    if not isinstance(value, str):
        return value, "must be a string"
    return value, None


def _cross_checks(values: dict[str, Any], bad: set[str]) -> list[str]:
    problems = []
    if "silos" not in bad:
        silos = [s.strip() for s in values["silos"].split(",") if s.strip()]
        if len(set(silos)) != len(silos):
            problems.append(f"'silos' = {values['silos']!r}: names a silo twice")
        if "target" not in bad and values["target"] not in silos:
            problems.append(f"'target' = {values['target']!r}: not one of 'silos' ({', '.join(silos)})")
        for name in silos:
            if not name.replace("_", "").isalnum():
                problems.append(f"'silos': silo name {name!r} may only hold letters, digits and '_'")
        if not {"min-silos", "merchants-per-category"} & bad:
            nodes = len(silos) * values["merchants_per_category"]
            if values["min_silos"] > nodes:
                problems.append(
                    f"'min-silos' = {values['min_silos']}: more than the {nodes} silo nodes "
                    f"({len(silos)} silos x {values['merchants_per_category']} merchants)"
                )
    if "event-weights" not in bad:
        try:
            parse_event_weights(values["event_weights"])
        except ValueError as exc:
            problems.append(f"'event-weights' = {values['event_weights']!r}: {exc}")
    return problems


def parse_event_weights(text: str) -> dict[str, float]:
    """Parse ``"view=1,cart=2,purchase=4"`` into a mapping; raise ValueError on a bad entry."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, number = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"entry {part!r} is not of the form event=weight")
        try:
            weight = float(number)
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {number.strip()!r}") from None
        if not weight > 0:
            raise ValueError(f"weight of {name!r} must be > 0, got {weight}")
        weights[name] = weight
    return weights


def load_defaults(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of the project's pyproject.toml."""
    with open(pyproject, "rb") as fh:
        data = tomllib.load(fh)
    return dict(data["tool"]["flwr"]["app"]["config"])


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override. The value is read as TOML (``3``, ``0.5``, ``true``,
    ``"text"``); a value that is not TOML is taken as a plain string (``target=Beauty``)."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError("cannot parse override:", [f"{text!r}: expected key=value"])
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(overrides: Mapping[str, Any] | None = None, *, pyproject: Path = PYPROJECT) -> RunConfig:
    """The defaults from pyproject.toml with ``overrides`` applied, validated."""
    mapping = load_defaults(pyproject)
    for key, value in (overrides or {}).items():
        if key not in mapping:
            raise ConfigError("invalid run config:", [f"{key!r}: unknown key (known keys: {', '.join(sorted(mapping))})"])
        mapping[key] = value
    return RunConfig.from_mapping(mapping)
