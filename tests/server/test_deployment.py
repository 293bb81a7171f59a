"""Deployment Engine on loopback: a SuperLink with TLS and SuperNode authentication, one SuperNode per
silo (two silos of a slice of the bundled data), ``flwr run`` against them. Every process started
here is stopped by PID."""

from __future__ import annotations

import json
import os
import time

import pytest

from client.keys import write_key_pair
from server.credentials import CA_CERT, write_certificates
from server.deployment import Superlink, Supernode

SILOS = ("Beauty", "Toys")
RUN_CONFIG = {
    "silos": "Beauty,Toys", "num-server-rounds": 2, "shopper-table-size": 8192, "item-table-size": 8192,
    "embedding-dim": 8, "dp-batch-size": 256, "private-transfer": "dp-sgd",  # the DP-SGD path, deployed
}

pytestmark = pytest.mark.slow


def _gone(proc) -> bool:
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def federation(tmp_path_factory, data_slice):
    """A TLS + authentication SuperLink with the two silos' keys registered and their SuperNodes up."""
    work = tmp_path_factory.mktemp("deploy")
    certificates = work / "certificates"
    write_certificates(certificates, ["127.0.0.1", "localhost"])
    keys = {name: write_key_pair(work / "keys" / name)[0] for name in (*SILOS, "Unregistered")}
    started: list = []
    with Superlink(work, certificates) as link:
        started.append(link)
        for name in SILOS:
            link.register(keys[name].with_name(name + ".pub"), name=name)
        nodes = {}
        try:
            for name in SILOS:
                node_config = {"silo": name, "data-dir": str(data_slice), "state-dir": str(work / "silo-state" / name)}
                nodes[name] = Supernode(name, link.address, node_config, work, ca_cert=certificates / CA_CERT,
                                        private_key=keys[name]).start()
                started.append(nodes[name])
            link.wait_online(len(SILOS))
            yield {"link": link, "nodes": nodes, "keys": keys, "work": work, "certificates": certificates,
                   "data": data_slice}
        finally:
            for node in nodes.values():
                node.stop()
    # everything started was stopped, by PID: no process group of ours is left
    assert all(_gone(p.proc) for p in started)


def test_a_tls_authenticated_federation_runs_to_the_end(federation):
    link, work = federation["link"], federation["work"]
    run_dir = work / "runs" / "two-rounds"

    result = link.run({**RUN_CONFIG, "data-dir": str(federation["data"])}, run_dir, work / "flwr-run.log", timeout=600)

    lines = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    trained = sorted((l["round"], l["silo"]) for l in lines if l.get("phase") == "pretrain" and l.get("status") == "ok")
    assert trained == [(1, "Beauty"), (1, "Toys"), (2, "Beauty"), (2, "Toys")]
    assert [l["silo"] for l in lines if l.get("phase") == "finetune" and l.get("status") == "ok"] == ["Toys"]
    assert result["dp"] and set(result["epsilon_by_silo"]) == set(SILOS)
    history = result["epsilon_history"]
    assert 0 < history["Beauty"][0] < history["Beauty"][1] <= 8.0
    report = json.loads((run_dir / "privacy_report.json").read_text())
    assert report["budgets_respected"] and {s["silo"] for s in report["summary"]} == set(SILOS)
    assert (run_dir / "privacy_report.md").stat().st_size > 0 and (run_dir / "privacy_budget.png").stat().st_size > 0
    # each silo's final model stays on the silo's side, where its node config says
    assert all((work / "silo-state" / name / "model.npz").exists() for name in SILOS)


def test_a_node_with_an_unregistered_key_or_without_the_ca_cannot_join(federation):
    link, work, keys = federation["link"], federation["work"], federation["keys"]
    node_config = {"silo": "Beauty", "data-dir": str(federation["data"])}
    unregistered = Supernode("unregistered", link.address, node_config, work, ca_cert=federation["certificates"] / CA_CERT,
                             private_key=keys["Unregistered"], max_retries=1).start()
    no_ca = Supernode("no-ca", link.address, node_config, work, private_key=keys["Beauty"], max_retries=1).start()
    try:
        assert unregistered.proc.wait(timeout=90) != 0
        assert no_ca.proc.wait(timeout=90) != 0
    finally:
        unregistered.stop()
        no_ca.stop()
    assert "Failed to activate SuperNode" in unregistered.log.read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in no_ca.log.read_text()
    online = [n for n in link.nodes() if n["status"] == "online"]
    assert len(online) == len(SILOS)  # only the two registered silos


def test_a_run_goes_on_without_a_silo_killed_mid_run_and_loses_nothing(federation):
    link, work, nodes = federation["link"], federation["work"], federation["nodes"]
    run_dir = work / "runs" / "killed"
    run_dir.mkdir(parents=True)
    config = {**RUN_CONFIG, "num-server-rounds": 3, "min-silos": 1, "data-dir": str(federation["data"]),
              "run-dir": str(run_dir)}
    proc = link.launch(config, work / "flwr-killed.log")
    try:
        rounds = run_dir / "rounds.jsonl"
        deadline = time.monotonic() + 300
        while not (rounds.exists() and '"silos_ok"' in rounds.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None, "round 1 did not finish"
            time.sleep(0.5)
        before = rounds.read_text()
        nodes["Beauty"].kill()  # Beauty's SuperNode and its ClientApp, SIGKILL, after round 1

        assert proc.wait(timeout=420) == 0
    finally:
        if proc.poll() is None:
            from server.processes import stop_tree
            stop_tree(proc)

    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed"
    text = rounds.read_text()
    assert text.startswith(before)  # nothing written before the failure changed
    lines = [json.loads(line) for line in text.splitlines()]  # every line whole
    summaries = {l["round"]: l for l in lines if "silos_ok" in l and l["phase"] == "pretrain"}
    assert summaries[1]["silos_ok"] == 2
    assert summaries[2]["failed"] == ["Beauty"] and summaries[2]["silos_ok"] == 1
    assert summaries[3]["silos_ok"] == 1
    assert any(l.get("silo") == "Toys" and l["phase"] == "finetune" and l["status"] == "ok" for l in lines)
    report = json.loads((run_dir / "privacy_report.json").read_text())
    beauty = next(s for s in report["silos"] if s["silo"] == "Beauty")
    assert [(e["phase"], e["round"]) for e in beauty["entries"]] == [("pretrain", 1)]  # its spend until it died
    assert json.loads((run_dir / "federated.json").read_text())["test"]["cold-start"]["n"] > 0
