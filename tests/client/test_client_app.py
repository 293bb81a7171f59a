"""The ClientApp's per-node settings: a data owner's own budget through node_config."""

import json

import pytest
from flwr.app import Context, RecordDict

from client import client_app
from client import records as R
from crossrec_core.config import load_config
from crossrec_core.errors import ConfigError


def _run_config(data_dir, **overrides):
    base = {"data-dir": str(data_dir), "silos": "Beauty,Toys", "shopper-table-size": 8192,
            "item-table-size": 8192, "embedding-dim": 8, "epochs": 1, "num-server-rounds": 2}
    return load_config({**base, **overrides}).to_run_config()


def test_node_config_sets_the_silo_budget_delta_and_data(tmp_path, data_slice):
    run_config = _run_config(tmp_path / "not-here")
    config = client_app.node_run_config(
        run_config, {"epsilon-budget": 2, "delta": 1e-6, "data-dir": str(data_slice), "silo": "Toys"})
    assert (config.epsilon_budget, config.delta, config.data_dir) == (2.0, 1e-6, str(data_slice))
    # keys a node may not set are ignored: the run's settings hold for everything else
    config = client_app.node_run_config(run_config, {"learning-rate": 9.0, "num-server-rounds": 99})
    assert (config.learning_rate, config.num_server_rounds) == (run_config["learning-rate"], 2)


@pytest.mark.parametrize("key, value, message", [("epsilon-budget", -1.0, "must be > 0"), ("delta", 2.0, "strictly between")])
def test_a_bad_node_budget_is_refused_with_its_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        client_app.node_run_config(_run_config(tmp_path), {key: value})
    assert key in str(err.value)


def _setup_reply(data_slice, node_config, **run_overrides):
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                      run_config=_run_config(data_slice, **run_overrides))
    return dict(client_app.setup_info(context)), context


def test_a_node_budget_too_small_for_its_plan_is_refused_at_setup(data_slice):
    info, context = _setup_reply(data_slice, {"partition-id": 1, "epsilon-budget": 1e-7}, **{"private-transfer": "dp-sgd"})
    assert info["status"] == R.STATUS_REFUSED and info["name"] == "Toys"
    assert "epsilon" in info["reason"].lower() or "ε" in info["reason"]
    assert R.STATE_PRIVACY not in context.state  # nothing planned, nothing trained


@pytest.mark.parametrize("design", ["segments", "dp-sgd"])
def test_a_node_budget_override_is_the_one_its_ledger_plans_for(data_slice, design):
    info, context = _setup_reply(data_slice, {"partition-id": 0, "epsilon-budget": 3.0}, **{"private-transfer": design})
    assert info["status"] == R.STATUS_OK and info["name"] == "Beauty"
    plan = json.loads(info["plan"])
    assert plan["epsilon_budget"] == 3.0
    # the planned work, all of it, is what the accountant says the budget allows: ε(plan) <= 3
    ledger = json.loads(str(context.state[R.STATE_PRIVACY]["ledger"]))
    assert ledger["epsilon_budget"] == 3.0
    assert ledger["planned_steps"] > 0 if design == "dp-sgd" else ledger["planned_pure_epsilon"] > 0
    from crossrec_core.privacy import PrivacyLedger
    full = PrivacyLedger.from_dict(ledger).epsilon(extra_steps=ledger["planned_steps"],
                                                   extra_pure=ledger["planned_pure_epsilon"])
    assert 2.9 < full <= 3.0


def test_a_node_sets_the_federation_key_and_a_relative_data_dir_is_refused(tmp_path, data_slice):
    run_config = _run_config(data_slice)
    config = client_app.node_run_config(run_config, {"federation-key": "silos-only-secret"})
    assert config.federation_key == "silos-only-secret" != run_config["federation-key"]
    with pytest.raises(ConfigError) as err:
        client_app.node_run_config(run_config, {"data-dir": "data/amazon4", "epsilon-budget": 0})
    assert "absolute path" in str(err.value) and "'epsilon-budget'" in str(err.value)  # both problems at once


def test_a_deployed_node_without_a_silo_name_is_told_how_to_start(data_slice):
    config = client_app.node_run_config(_run_config(data_slice), {})
    assert client_app.node_silo(config, {"silo": "Toys"}) == "Toys"
    assert client_app.node_silo(config, {"partition-id": 0}) == "Beauty"
    with pytest.raises(ConfigError, match="--node-config"):
        client_app.node_silo(config, {"data-dir": "/srv/data"})
    for bad in (2, -1, "0", True):  # the run has two node silos
        with pytest.raises(ConfigError, match="'partition-id'"):
            client_app.node_silo(config, {"partition-id": bad})
