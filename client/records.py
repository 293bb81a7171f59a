"""The message protocol between the crossrec ServerApp and ClientApp: record names and conversions."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from crossrec_core.aggregation import SiloUpdate
from crossrec_core.silo import FINETUNE, PRETRAIN

# Record names in message content.
SHARED = "shared"  # ArrayRecord, server -> silo: the global shared tensors
UPDATE = "update"  # ArrayRecord, silo -> server: deltas of the shared tensors and their row masks
INSTRUCTION = "instruction"  # ConfigRecord, server -> silo: phase, round, epochs
SILO = "silo"  # ConfigRecord, silo -> server: who answered, status, reason, privacy plan
METRICS = "metrics"  # MetricRecord, silo -> server
TEST = "test"  # MetricRecord, silo -> server: "<group>/<metric>" test metrics
RELEASE = "release"  # ArrayRecord: a source's segment values (silo -> server), every source's (server -> target)

# Context state entries kept by a silo across rounds.
STATE_PRIVATE = "private"
STATE_PRIVACY = "privacy"

ROWS_SUFFIX = ".rows"  # int64 indices of the rows a delta holds; absent: the delta holds every row

PHASE_SETUP = "setup"
PHASE_PRETRAIN = PRETRAIN
PHASE_FINETUNE = FINETUNE
PHASE_RELEASE = "release"  # segment transfer: a source releases its segment values
RR_EPSILON = "rr-epsilon:"  # instruction key prefix, server -> target: a source's randomized-response ε
PHASE_SEGMENTS = "segments"  # segment transfer: the target fits its segment model and is tested

STATUS_OK = "ok"
STATUS_REFUSED = "refused"


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def update_to_record(update: SiloUpdate) -> ArrayRecord:
    """A silo's update as an ArrayRecord: per tensor its deltas, plus ``<name>.rows`` when only some
    rows were trained (without DP only the trained rows travel)."""
    arrays: dict[str, np.ndarray] = {}
    for name, delta in update.deltas.items():
        arrays[name] = delta
        rows = update.rows.get(name)
        if rows is not None:
            arrays[name + ROWS_SUFFIX] = np.asarray(rows, dtype=np.int64)
    return to_array_record(arrays)


def update_from_record(record: ArrayRecord, names: list[str], num_examples: int) -> SiloUpdate:
    arrays = from_array_record(record)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"update lacks {missing}")
    return SiloUpdate({n: arrays[n] for n in names}, {n: arrays.get(n + ROWS_SUFFIX) for n in names}, num_examples)


def to_metric_record(values: dict[str, Any]) -> MetricRecord:
    """MetricRecord takes Python int/float only: convert numpy scalars, drop None."""
    out: dict[str, int | float] = {}
    for k, v in values.items():
        if v is None:
            continue
        out[k] = int(v) if isinstance(v, (bool, np.bool_, int, np.integer)) else float(v)
    return MetricRecord(out)


def to_json_config(**values: Any) -> ConfigRecord:
    """A ConfigRecord whose structured values are JSON strings (ConfigRecord holds scalars)."""
    return ConfigRecord({k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in values.items()})
