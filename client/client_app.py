"""ClientApp: one node is one silo.

The silo is named by ``node_config["silo"]`` (a deployed SuperNode) or, in simulation, by the node's
``partition-id`` in the run's list of silos. ``node_config`` may also set the silo's ``data-dir``,
``epsilon-budget`` and ``delta``. Only the shared tensors' update leaves the node; the silo-private
head and item biases and the privacy ledger stay in ``context.state`` across rounds, and the ledger
goes back to the server with every reply so the run's privacy report can be written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client import records as R
from crossrec_core.aggregation import apply_update
from crossrec_core.config import PROJECT_ROOT, RunConfig
from crossrec_core.errors import ConfigError, PrivacyError
from crossrec_core.scenario import resolve_data_dir
from crossrec_core.segments import save_releases
from crossrec_core.privacy import PrivacyLedger
from crossrec_core.silo import (
    SEGMENT_MODEL_FILE,
    evaluate_test,
    fit_segments,
    load_view,
    new_ledger,
    release_segments,
    save_silo_model,
    train_round,
)

logger = logging.getLogger(__name__)
app = ClientApp()


# run_config keys a SuperNode may set for its own silo through --node-config: where its data is, its
# own privacy budget, and the federation key (held by the silos, never by the operator: in a
# deployment every silo sets the same key here and the run's own value is not used).
NODE_OVERRIDES = ("data-dir", "epsilon-budget", "delta", "federation-key", "secure-noise")


def node_run_config(run_config, node_config) -> RunConfig:
    """The run's config with this node's overrides (``NODE_OVERRIDES`` found in ``node_config``).

    A ``data-dir`` given by a node must be absolute: the ClientApp runs from the app bundle Flower
    installed, not from the folder the SuperNode was started in."""
    mapping = dict(run_config)
    for key in NODE_OVERRIDES:
        if key in node_config:
            mapping[key] = node_config[key]
    problems = []
    if "data-dir" in node_config and not Path(str(node_config["data-dir"])).is_absolute():
        problems.append(f"'data-dir' = {str(node_config['data-dir'])!r}: give the silo's data folder as an absolute path")
    try:
        config = RunConfig.from_mapping(mapping)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError("invalid node config:", problems)
    return resolve_data_dir(config, PROJECT_ROOT)


def node_silo(config: RunConfig, node_config) -> str:
    """This node's silo: ``node_config["silo"]`` (deployment) or the ``partition-id``-th node silo
    of the run (simulation)."""
    if "silo" in node_config:
        return str(node_config["silo"])
    if "partition-id" in node_config:
        raw = node_config["partition-id"]
        silos = config.node_silos
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < len(silos):
            raise ConfigError("invalid node config:", [
                f"'partition-id': {raw!r} must be an integer from 0 to {len(silos) - 1} "
                f"(the run has {len(silos)} node silos: {', '.join(silos)})"])
        return silos[raw]
    raise ConfigError("invalid node config:", [
        f"'silo': missing; start the SuperNode with --node-config \"silo='<one of {', '.join(config.node_silos)}>' "
        "data-dir='/absolute/path'\""])


def _view(context: Context):
    config = node_run_config(context.run_config, context.node_config)
    return load_view(config, node_silo(config, context.node_config))


def _private(context: Context):
    return R.from_array_record(context.state[R.STATE_PRIVATE]) if R.STATE_PRIVATE in context.state else None


def _ledger(context: Context, view) -> PrivacyLedger | None:
    """The silo's privacy ledger from its Context (created from its plan on first use)."""
    if not view.config.dp:
        return None
    if R.STATE_PRIVACY in context.state:
        return PrivacyLedger.from_dict(json.loads(str(context.state[R.STATE_PRIVACY]["ledger"])))
    ledger = new_ledger(view)
    _keep_ledger(context, ledger)
    return ledger


def _keep_ledger(context: Context, ledger: PrivacyLedger | None) -> None:
    if ledger is not None:
        context.state[R.STATE_PRIVACY] = ConfigRecord({"ledger": json.dumps(ledger.as_dict())})


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Setup (the default), a source's segment release, or the target's segment fitting."""
    phase = str(msg.content[R.INSTRUCTION].get("phase", R.PHASE_SETUP)) if R.INSTRUCTION in msg.content else R.PHASE_SETUP
    if phase == R.PHASE_RELEASE:
        return release(msg, context)
    if phase == R.PHASE_SEGMENTS:
        return fit(msg, context)
    return Message(RecordDict({R.SILO: setup_info(context)}), reply_to=msg)


def release(msg: Message, context: Context) -> Message:
    """Segment transfer, on a source: release one randomized segment value per shopper-table row."""
    view = _view(context)
    ledger = _ledger(context, view)
    if ledger is None or not view.config.segment_transfer:
        raise ConfigError("invalid run config:", ["a segment release needs dp = true and private-transfer = 'segments'"])
    try:
        values, metrics = release_segments(view, ledger)
    except PrivacyError as exc:
        logger.warning("%s", exc)
        _keep_ledger(context, ledger)
        status = R.to_json_config(name=view.name, status=R.STATUS_REFUSED, reason=str(exc), ledger=ledger.as_dict())
        return Message(RecordDict({R.SILO: status}), reply_to=msg)
    _keep_ledger(context, ledger)
    return Message(RecordDict({
        R.RELEASE: R.to_array_record({"values": values}),
        R.METRICS: R.to_metric_record(metrics),
        R.SILO: R.to_json_config(name=view.name, status=R.STATUS_OK, ledger=ledger.as_dict()),
    }), reply_to=msg)


def fit(msg: Message, context: Context) -> Message:
    """Segment transfer, on the target: fit the segment model from every source's release and its
    own shoppers, keep it on the silo's side, reply with test metrics."""
    view = _view(context)
    releases = R.from_array_record(msg.content[R.RELEASE])
    instruction = msg.content[R.INSTRUCTION]
    rr = {name: float(instruction[f"{R.RR_EPSILON}{name}"]) for name in releases if f"{R.RR_EPSILON}{name}" in instruction}
    model, test, metrics = fit_segments(view, releases, rr)
    folder = _state_folder(context, view)
    if folder is not None:
        model.save(folder / SEGMENT_MODEL_FILE)
        save_releases(folder, releases)
    ledger = _ledger(context, view)
    return Message(RecordDict({
        R.TEST: R.to_metric_record({f"{g}/{k}": v for g, m in test.items() for k, v in m.items()}),
        R.METRICS: R.to_metric_record(metrics),
        R.SILO: R.to_json_config(name=view.name, status=R.STATUS_OK, ledger=ledger.as_dict() if ledger else {}),
    }), reply_to=msg)


def setup_info(context: Context) -> ConfigRecord:
    """The setup reply's content: the silo's identity and size, and its plan or its refusal."""
    view = _view(context)
    try:
        ledger = _ledger(context, view)
    except PrivacyError as exc:
        return R.to_json_config(name=view.name, category=view.category, status=R.STATUS_REFUSED, reason=str(exc))
    return R.to_json_config(
        name=view.name, category=view.category, status=R.STATUS_OK, shoppers=view.split.num_users,
        train_interactions=len(view.split.train_user), plan=ledger.summary() if ledger else {},
        ledger=ledger.as_dict() if ledger else {},
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train from the global shared tensors; reply with their update, row masks and metrics."""
    view = _view(context)
    instruction = msg.content[R.INSTRUCTION]
    shared = R.from_array_record(msg.content[R.SHARED])
    ledger = _ledger(context, view)
    try:
        result = train_round(
            view, shared, _private(context), ledger,
            epochs=float(instruction["epochs"]), round_number=int(instruction["round"]), phase=str(instruction["phase"]),
        )
    except PrivacyError as exc:
        logger.warning("%s", exc)
        _keep_ledger(context, ledger)  # the refusal is part of the silo's record
        status = R.to_json_config(name=view.name, status=R.STATUS_REFUSED, reason=str(exc),
                                  ledger=ledger.as_dict() if ledger else {})
        return Message(RecordDict({R.SILO: status}), reply_to=msg)
    context.state[R.STATE_PRIVATE] = R.to_array_record(result.private)
    _keep_ledger(context, result.ledger)
    content = RecordDict({
        R.UPDATE: R.update_to_record(result.update),
        R.METRICS: R.to_metric_record(result.metrics),
        R.SILO: R.to_json_config(name=view.name, status=R.STATUS_OK,
                                 ledger=result.ledger.as_dict() if result.ledger else {}),
    })
    if bool(instruction.get("final", False)):
        _save_model(context, view, shared, result)
    if str(instruction["phase"]) == R.PHASE_FINETUNE:
        # The fine-tuned model is the silo's final one: its test metrics go back with the update.
        merged = apply_update(shared, result.update)
        test = evaluate_test(view, merged, result.private)
        content[R.TEST] = R.to_metric_record({f"{g}/{k}": v for g, m in test.items() for k, v in m.items()})
    return Message(content, reply_to=msg)


def _state_folder(context: Context, view) -> Path | None:
    """Where the silo keeps its final model: ``node_config["state-dir"]``, or ``<run-dir>/silos/<silo>/``
    in simulation (None: nowhere)."""
    if "state-dir" in context.node_config:
        return Path(str(context.node_config["state-dir"]))
    if view.config.run_dir:
        return Path(view.config.run_dir) / "silos" / view.name
    return None


def _save_model(context: Context, view, shared, result) -> None:
    """Keep the silo's final model (its shared tables after local training + private parts) on the
    silo's side."""
    folder = _state_folder(context, view)
    if folder is None:
        return
    state = apply_update(shared, result.update)
    state.update(result.private)
    save_silo_model(folder, state)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Test metrics of the global shared tensors with this silo's private parts, per shopper group."""
    view = _view(context)
    shared = R.from_array_record(msg.content[R.SHARED])
    test = evaluate_test(view, shared, _private(context))
    content = RecordDict({
        R.TEST: R.to_metric_record({f"{g}/{k}": v for g, m in test.items() for k, v in m.items()}),
        R.SILO: R.to_json_config(name=view.name, status=R.STATUS_OK),
    })
    return Message(content, reply_to=msg)


