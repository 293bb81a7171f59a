"""The federation's phases, driven through a Flower Grid: setup, then either

- pre-training rounds over all silos with non-diluting aggregation of the shared tensors, then
  transfer (fine-tuning) on the target silo (without DP, or with ``private-transfer = "dp-sgd"``), or
- segment transfer (with DP, ``private-transfer = "segments"``): every source silo releases one
  randomized segment value per shopper-table row, once; the target fits its segment model from them.

Everything the run produces goes to its run folder as it happens: ``config.json``, ``rounds.jsonl``
(one line per silo per round or release, and one summary line per round), then ``federated.json``,
``shared_arrays.npz`` (or ``segment_releases.npz``: what the sources released) and ``status.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client import records as R
from crossrec_core.aggregation import SiloUpdate, aggregate
from crossrec_core.config import RunConfig
from crossrec_core.errors import CrossrecError
from crossrec_core.privacy import PrivacyLedger
from crossrec_core.privacy_report import write_ledger_report
from crossrec_core.reporting import code_version, write_json
from crossrec_core.scenario import ALL, COLD
from crossrec_core.silo import initial_shared

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
ROUNDS_FILE = "rounds.jsonl"
RESULT_FILE = "federated.json"
ARRAYS_FILE = "shared_arrays.npz"
RELEASES_FILE = "segment_releases.npz"


class FederationError(CrossrecError):
    """The federation cannot go on (too few silos answered, no target silo, ...)."""


class Federation:
    def __init__(self, grid: Grid, config: RunConfig, run_dir: Path) -> None:
        self.grid, self.config, self.run_dir = grid, config, run_dir
        self.silos: dict[int, dict[str, Any]] = {}  # node id -> what the silo said at setup
        self.epsilon: dict[str, list[float]] = {}  # silo -> ε after each of its training calls
        self.ledgers: dict[str, PrivacyLedger] = {}  # silo -> its latest privacy ledger
        self.setup_refusals: list[str] = []

    # ---- helpers --------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / ROUNDS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def _send(self, contents: dict[int, RecordDict], message_type: str, group: str) -> dict[int, Message]:
        messages = [Message(c, dst_node_id=n, message_type=message_type, group_id=group) for n, c in contents.items()]
        replies = self.grid.send_and_receive(messages, timeout=self.config.round_timeout)
        return {r.metadata.src_node_id: r for r in replies}

    def _wait_for_nodes(self, timeout: float = 300.0) -> list[int]:
        expected = len(self.config.node_silos)
        deadline = time.monotonic() + timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= expected or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if len(nodes) < self.config.min_silos:
            raise FederationError(f"only {len(nodes)} node(s) connected; min-silos is {self.config.min_silos}")
        if len(nodes) < expected:
            logger.warning("%d of %d expected nodes connected; going on", len(nodes), expected)
        return nodes

    # ---- phases ---------------------------------------------------------------------------
    def setup(self, nodes: list[int]) -> None:
        contents = {n: RecordDict({R.INSTRUCTION: ConfigRecord({"phase": R.PHASE_SETUP})}) for n in nodes}
        replies = self._send(contents, MessageType.QUERY, "setup")
        for node in nodes:
            reply = replies.get(node)
            if reply is None or reply.has_error():
                reason = "no reply" if reply is None else reply.error.reason
                logger.warning("node %s failed setup: %s", node, reason)
                self._log({"phase": "setup", "node": node, "status": "failed", "reason": reason})
                continue
            info = dict(reply.content[R.SILO])
            if str(info.get("status", R.STATUS_OK)) == R.STATUS_REFUSED:
                reason = str(info.get("reason", ""))
                logger.warning("silo %s refused the run at setup: %s", info.get("name"), reason)
                self.setup_refusals.append(f"{info.get('name')}: {reason}")
                self._log({"phase": "setup", "node": node, "status": "refused", "silo": info.get("name"), "reason": reason})
                continue
            info["plan"] = json.loads(str(info.get("plan", "{}")))
            self._keep_ledger(info.pop("ledger", None))
            self.silos[node] = info
            self._log({"phase": "setup", "node": node, "status": "ok", **info})
        names = [s["name"] for s in self.silos.values()]
        if len(set(names)) != len(names):
            raise FederationError(f"two nodes claim the same silo: {sorted(names)}")
        if len(self.silos) < self.config.min_silos:
            refused = f"; refused: {'; '.join(self.setup_refusals)}" if self.setup_refusals else ""
            raise FederationError(
                f"only {len(self.silos)} silo(s) answered setup; min-silos is {self.config.min_silos}{refused}")

    def _keep_ledger(self, ledger_json: Any) -> None:
        """Keep the latest privacy ledger a silo reported (JSON text in its reply)."""
        if not ledger_json:
            return
        data = json.loads(str(ledger_json))
        if data:
            ledger = PrivacyLedger.from_dict(data)
            self.ledgers[ledger.silo] = ledger

    def write_privacy_report(self, note: str = "") -> None:
        notes = [note] if note else []
        if self.config.dp and not self.ledgers:
            notes.append("no silo reported a privacy ledger (the run stopped before any silo planned its DP work)")
        write_ledger_report(self.run_dir, [self.ledgers[k] for k in sorted(self.ledgers)], dp=self.config.dp,
                            delta=self.config.delta, accountant=self.config.accountant,
                            source=self.run_dir.name, extra_notes=notes, design=self.design)

    @property
    def design(self) -> str:
        return "segments" if self.config.segment_transfer else "dp-sgd"

    def train_round(self, global_state: dict[str, np.ndarray], round_number: int, phase: str,
                    nodes: Iterable[int], epochs: float, final: bool) -> tuple[dict[int, tuple[Message, SiloUpdate]], dict[str, Any]]:
        start = time.perf_counter()
        shared = R.to_array_record(global_state)
        bytes_down = sum(v.nbytes for v in global_state.values())
        instruction = ConfigRecord({"phase": phase, "round": round_number, "epochs": float(epochs), "final": final})
        contents = {n: RecordDict({R.SHARED: shared, R.INSTRUCTION: instruction}) for n in nodes}
        replies = self._send(contents, MessageType.TRAIN, f"{phase}-{round_number}")
        ok: dict[int, tuple[Message, SiloUpdate]] = {}
        summary: dict[str, Any] = {"round": round_number, "phase": phase, "failed": [], "refused": []}
        for node in contents:
            name = self.silos[node]["name"]
            reply = replies.get(node)
            if reply is None or reply.has_error():
                reason = ("no reply (the node went offline, or round-timeout passed)" if reply is None
                          else reply.error.reason)
                logger.warning("round %d: silo %s failed: %s", round_number, name, reason)
                summary["failed"].append(name)
                self._log({"round": round_number, "phase": phase, "silo": name, "status": "failed", "reason": reason})
                continue
            silo = reply.content[R.SILO]
            self._keep_ledger(silo.get("ledger"))
            if str(silo["status"]) == R.STATUS_REFUSED:
                summary["refused"].append(name)
                self._log({"round": round_number, "phase": phase, "silo": name, "status": "refused", "reason": str(silo["reason"])})
                continue
            metrics = dict(reply.content[R.METRICS])
            try:
                update = R.update_from_record(reply.content[R.UPDATE], list(global_state), int(metrics["num-examples"]))
            except (KeyError, ValueError) as exc:
                logger.warning("round %d: silo %s sent a malformed update: %s", round_number, name, exc)
                summary["failed"].append(name)
                self._log({"round": round_number, "phase": phase, "silo": name, "status": "failed",
                           "reason": f"malformed update: {exc}"})
                continue
            bytes_up = sum(v.nbytes for v in update.deltas.values()) + sum(
                r.nbytes for r in update.rows.values() if r is not None)
            self.epsilon.setdefault(name, []).append(float(metrics.get("epsilon", 0.0)))
            self._log({"round": round_number, "phase": phase, "silo": name, "status": "ok",
                       "bytes_down": bytes_down, "bytes_up": bytes_up, **metrics})
            ok[node] = (reply, update)
        summary.update(silos_ok=len(ok), seconds=round(time.perf_counter() - start, 3))
        return ok, summary

    def pretrain(self, nodes: list[int]) -> dict[str, np.ndarray]:
        global_state = initial_shared(self.config)
        for r in range(1, self.config.num_server_rounds + 1):
            last = r == self.config.num_server_rounds
            ok, summary = self.train_round(global_state, r, R.PHASE_PRETRAIN, nodes, self.config.local_epochs, last)
            if len(ok) < self.config.min_silos:
                self._log(summary)
                raise FederationError(
                    f"round {r}: {len(ok)} silo(s) answered (failed: {summary['failed']}, refused: "
                    f"{summary['refused']}); min-silos is {self.config.min_silos}"
                )
            start = time.perf_counter()
            global_state = aggregate(global_state, [u for _, u in ok.values()], rule=self.config.aggregation)
            summary["aggregate_seconds"] = round(time.perf_counter() - start, 3)
            local = [float(reply.content[R.METRICS]["round-seconds"]) for reply, _ in ok.values()]
            summary["slowest_silo_seconds"] = round(max(local), 3)
            self._log(summary)
            logger.info("round %d: %d silo(s), %.1f s", r, len(ok), summary["seconds"])
        return global_state

    def transfer(self, global_state: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        targets = self._targets()
        if self.config.finetune_epochs > 0:
            tuned, summary = self.train_round(global_state, 1, R.PHASE_FINETUNE, targets, self.config.finetune_epochs, True)
            self._log(summary)
            ok = {n: reply for n, (reply, _) in tuned.items()}
        else:
            contents = {n: RecordDict({R.SHARED: R.to_array_record(global_state)}) for n in targets}
            ok = {n: m for n, m in self._send(contents, MessageType.EVALUATE, "evaluate").items() if not m.has_error()}
        if not ok:
            raise FederationError("no target silo returned test metrics")
        return combine_test_metrics([dict(m.content[R.TEST]) for m in ok.values()])

    def _targets(self) -> list[int]:
        targets = [n for n, s in self.silos.items() if s["category"] == self.config.target]
        if not targets:
            raise FederationError(f"no node of the target silo {self.config.target!r} took part")
        return targets

    def _failed(self, reply: Message | None, phase: str, name: str) -> bool:
        """True (logged, and recorded in ``rounds.jsonl``) if ``reply`` is missing or an error."""
        if reply is not None and not reply.has_error():
            return False
        reason = "no reply" if reply is None else reply.error.reason
        logger.warning("%s: silo %s failed: %s", phase, name, reason)
        self._log({"phase": phase, "silo": name, "status": "failed", "reason": reason})
        return True

    def segment_transfer(self) -> dict[str, dict[str, float]]:
        """Every source silo releases its segment values once; the target fits its segment model from
        them and returns its test metrics. Sources that fail or refuse are logged and left out."""
        targets = self._targets()
        sources = [n for n in self.silos if n not in targets]
        start = time.perf_counter()
        instruction = ConfigRecord({"phase": R.PHASE_RELEASE})
        replies = self._send({n: RecordDict({R.INSTRUCTION: instruction}) for n in sources}, MessageType.QUERY, "release")
        releases: dict[str, np.ndarray] = {}
        summary: dict[str, Any] = {"phase": R.PHASE_RELEASE, "failed": [], "refused": []}
        for node in sources:
            name = self.silos[node]["name"]
            reply = replies.get(node)
            if self._failed(reply, R.PHASE_RELEASE, name):
                summary["failed"].append(name)
                continue
            silo = reply.content[R.SILO]
            self._keep_ledger(silo.get("ledger"))
            if str(silo["status"]) == R.STATUS_REFUSED:
                summary["refused"].append(name)
                self._log({"phase": R.PHASE_RELEASE, "silo": name, "status": "refused", "reason": str(silo["reason"])})
                continue
            values = R.from_array_record(reply.content[R.RELEASE]).get("values")
            if (values is None or values.dtype != np.uint8 or values.shape != (self.config.shopper_table_size,)
                    or (values.size and int(values.max()) >= self.config.segments)):
                summary["failed"].append(name)
                self._log({"phase": R.PHASE_RELEASE, "silo": name, "status": "failed",
                           "reason": "malformed release (expected one uint8 value below segments per shopper-table row)"})
                continue
            metrics = dict(reply.content[R.METRICS])
            self.epsilon.setdefault(name, []).append(float(metrics.get("epsilon", 0.0)))
            self._log({"phase": R.PHASE_RELEASE, "silo": name, "status": "ok", "bytes_up": int(values.nbytes), **metrics})
            releases[name] = values
        summary.update(silos_ok=len(releases), seconds=round(time.perf_counter() - start, 3))
        self._log(summary)
        if not releases:
            raise FederationError(f"no source silo released segments (failed: {summary['failed']}, "
                                  f"refused: {summary['refused']})")
        np.savez_compressed(self.run_dir / RELEASES_FILE, **releases)
        # each release's randomized-response ε (public: the source's ledger), for undoing its channel
        rr = {f"{R.RR_EPSILON}{name}": self.ledgers[name].pure_epsilon for name in releases}
        instruction = ConfigRecord({"phase": R.PHASE_SEGMENTS, **rr})
        content = RecordDict({R.INSTRUCTION: instruction, R.RELEASE: R.to_array_record(releases)})
        replies = self._send({n: content for n in targets}, MessageType.QUERY, "segments")
        tests = []
        for node in targets:
            name = self.silos[node]["name"]
            reply = replies.get(node)
            if self._failed(reply, R.PHASE_SEGMENTS, name):
                continue
            self._keep_ledger(reply.content[R.SILO].get("ledger"))
            self._log({"phase": R.PHASE_SEGMENTS, "silo": name, "status": "ok",
                       "bytes_down": int(sum(v.nbytes for v in releases.values())), **dict(reply.content[R.METRICS])})
            tests.append(dict(reply.content[R.TEST]))
        if not tests:
            raise FederationError("no target silo returned test metrics")
        return combine_test_metrics(tests)

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        write_json(self.run_dir / STATUS_FILE, {"status": "running"})
        write_json(self.run_dir / "config.json", {"run_config": self.config.to_run_config(), "code_version": code_version()})
        try:
            nodes = self._wait_for_nodes()
            self.setup(nodes)
            if self.config.segment_transfer:
                test = self.segment_transfer()
                epsilon_by_silo = {name: ledger.spent for name, ledger in sorted(self.ledgers.items())}
            else:
                global_state = self.pretrain(sorted(self.silos))
                test = self.transfer(global_state)
                np.savez_compressed(self.run_dir / ARRAYS_FILE, **global_state)
                epsilon_by_silo = {name: eps[-1] for name, eps in sorted(self.epsilon.items())}
            result = {
                "dp": self.config.dp,
                "design": self.design if self.config.dp else "none",
                "target": self.config.target,
                "test": test,
                "epsilon_by_silo": epsilon_by_silo,
                "epsilon_history": self.epsilon,
                "plans": {s["name"]: s["plan"] for s in self.silos.values()},
                "privacy": {name: ledger.summary() for name, ledger in sorted(self.ledgers.items())},
                "wall_seconds": round(time.perf_counter() - start, 2),
            }
            write_json(self.run_dir / RESULT_FILE, result)
            self.write_privacy_report()
            write_json(self.run_dir / STATUS_FILE, {"status": "completed", "wall_seconds": result["wall_seconds"]})
            return result
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            try:
                self.write_privacy_report(f"the run failed ({reason}); the figures cover the steps taken until then")
            except Exception as report_exc:  # the failure being reported matters more
                logger.error("could not write the privacy report: %s", report_exc)
            write_json(self.run_dir / STATUS_FILE, {"status": "failed", "reason": reason})
            raise


def finished_result(run_dir: Path) -> dict[str, Any]:
    """The result of the federated run in ``run_dir`` if it completed; FederationError naming its
    status and reason if not (``flwr run`` exits 0 even when the run failed)."""
    status_path = run_dir / STATUS_FILE
    try:
        status = json.loads(status_path.read_text()) if status_path.exists() else {"status": "missing"}
    except (OSError, ValueError) as exc:
        status = {"status": "unreadable", "reason": str(exc)}
    if status.get("status") != "completed":
        raise FederationError(f"federated run {run_dir.name} did not complete (status {status.get('status')}: "
                              f"{status.get('reason', 'no reason recorded')})")
    return json.loads((run_dir / RESULT_FILE).read_text())


def combine_test_metrics(parts: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Merge per-merchant test metrics into the category's: means weighted by each group's size."""
    out: dict[str, dict[str, float]] = {}
    for group in (COLD, ALL):
        sizes = [p.get(f"{group}/n", 0) for p in parts]
        total = sum(sizes)
        metrics = {}
        if total:
            keys = [k.split("/", 1)[1] for k in parts[0] if k.startswith(f"{group}/") and not k.endswith("/n")]
            for key in keys:
                metrics[key] = sum(p[f"{group}/{key}"] * n for p, n in zip(parts, sizes) if n) / total
        out[group] = {**metrics, "n": total}
    return out
