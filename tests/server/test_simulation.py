"""End to end: the real Flower simulation (SuperLink + simulated SuperNodes) on a slice of the data."""

import json
import os

import numpy as np
import pytest

from server import simulate


@pytest.mark.slow
def test_two_silos_two_rounds_without_and_with_dp(data_slice, tmp_path, monkeypatch, capsys):
    links = []
    original_enter = simulate.SimulationLink.__enter__

    def spy_enter(self):
        links.append(self)
        return original_enter(self)

    monkeypatch.setattr(simulate.SimulationLink, "__enter__", spy_enter)
    overrides = {
        "data-dir": f'"{data_slice}"', "silos": '"Beauty,Toys"', "num-server-rounds": 2, "epochs": 1,
        "shopper-table-size": 8192, "item-table-size": 8192, "embedding-dim": 8, "output-dir": f'"{tmp_path}"',
    }
    args = [a for k, v in overrides.items() for a in ("-c", f"{k}={v}")] + ["--quiet"]

    assert simulate.main(args) == 0

    out = capsys.readouterr().out
    assert "| federated (DP, segments) | cold-start |" in out and "| federated (no DP) | all |" in out
    top = next(tmp_path.glob("run-*"))
    assert {p.name for p in top.iterdir()} >= {"config.json", "comparison.md", "comparison.json", "federated-dp", "federated-nodp"}
    for variant in ("nodp", "dp"):
        run = top / f"federated-{variant}"
        assert json.loads((run / "status.json").read_text())["status"] == "completed"
    # without DP: pre-training rounds of the shared tables
    run = top / "federated-nodp"
    lines = [json.loads(l) for l in (run / "rounds.jsonl").read_text().splitlines()]
    per_silo = [l for l in lines if l.get("phase") == "pretrain" and "silo" in l]
    assert sorted((l["round"], l["silo"]) for l in per_silo) == [(1, "Beauty"), (1, "Toys"), (2, "Beauty"), (2, "Toys")]
    assert all(l["status"] == "ok" and l["bytes_up"] > 0 for l in per_silo)
    arrays = np.load(run / "shared_arrays.npz")
    assert sorted(arrays.files) == ["item_table.weight", "shopper_table.weight"]
    assert arrays["shopper_table.weight"].shape == (8192, 8)
    # with DP (segment transfer, the default): the source's one release, then the target's fit
    run = top / "federated-dp"
    lines = [json.loads(l) for l in (run / "rounds.jsonl").read_text().splitlines()]
    released = [l for l in lines if l.get("phase") == "release" and "silo" in l]
    assert [(l["silo"], l["status"], l["bytes_up"]) for l in released] == [("Beauty", "ok", 8192)]
    fitted = [l for l in lines if l.get("phase") == "segments" and "silo" in l]
    assert [(l["silo"], l["status"]) for l in fitted] == [("Toys", "ok")]
    releases = np.load(run / "segment_releases.npz")
    assert releases.files == ["Beauty"] and releases["Beauty"].shape == (8192,) and releases["Beauty"].max() < 2
    result = json.loads((run / "federated.json").read_text())
    assert result["design"] == "segments"
    assert result["epsilon_by_silo"]["Beauty"] == pytest.approx(8.0, abs=0.05)
    assert result["epsilon_by_silo"]["Toys"] == 0.0  # the target releases nothing
    # every run folder carries the privacy report; the top one takes its figures from the DP run
    for folder in (top, top / "federated-dp", top / "federated-nodp"):
        assert all((folder / name).stat().st_size > 0 for name in ("privacy_report.json", "privacy_report.md", "privacy_budget.png"))
    assert json.loads((top / "federated-nodp" / "privacy_report.json").read_text())["dp"] is False
    report = json.loads((top / "privacy_report.json").read_text())
    assert report["dp"] and report["budgets_respected"] and report["source"] == "federated-dp"
    spent = {s["silo"]: s["epsilon_spent"] for s in report["summary"]}
    assert spent == pytest.approx(result["epsilon_by_silo"], abs=1e-6)
    phases = {l["silo"]: [(e["phase"], e["round"], e.get("mechanism", "gaussian")) for e in l["entries"]] for l in report["silos"]}
    # the default two values (membership): no Gaussian step, the whole budget on randomized response
    assert phases == {"Beauty": [("release", 1, "randomized-response")], "Toys": []}
    assert report["federation"]["all_silos"]["epsilon"] == pytest.approx(spent["Beauty"])  # only Beauty releases
    assert any("federated-nodp ran without DP" in n for n in report["notes"])
    assert "privacy report:" in out
    comparison = json.loads((top / "comparison.json").read_text())
    assert {r["method"] for r in comparison["rows"]} == {"popularity", "target-only", "pooled", "federated (no DP)", "federated (DP, segments)"}
    # everything started was stopped: the SuperLink's process group is gone
    assert links and links[0].proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(links[0].proc.pid, 0)

    # recommendations from the run: the target's own model, never an item the shopper trained on
    from crossrec_core.config import load_config
    from crossrec_core.errors import CrossrecError
    from crossrec_core.recommend import recommend
    from crossrec_core.silo import load_view

    view = load_view(load_config({k: v for k, v in json.loads((top / "federated-dp" / "config.json").read_text())["run_config"].items()}), "Toys")
    shopper_index = int(view.split.train_user[0])
    shopper = str(view.split.user_ids[shopper_index])
    items = recommend(top, "Toys", shopper, k=5)
    assert len(items) == 5 and len({i for i, _ in items}) == 5
    catalogue = set(view.split.item_ids.tolist())
    trained = {str(view.split.item_ids[i]) for i in view.split.train_item[view.split.train_user == shopper_index]}
    assert all(i in catalogue and i not in trained for i, _ in items)
    assert [s for _, s in items] == sorted((s for _, s in items), reverse=True)
    assert len(recommend(top, "Toys", "a-shopper-never-seen", k=3)) == 3
    with pytest.raises(CrossrecError, match="no model of silo"):
        recommend(top, "Garden", shopper)
