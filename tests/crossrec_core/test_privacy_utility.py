"""The privacy-utility command on hand-made run folders (numbers chosen so the gains are exact)."""

import json

import pytest

from crossrec_core import privacy_utility as pu
from crossrec_core.errors import CrossrecError


def _result(dp, cold, all_, spent=None):
    test = {"cold-start": {"ndcg@10": cold, "n": 100}, "all": {"ndcg@10": all_, "n": 400}}
    return {"dp": dp, "test": test, "epsilon_by_silo": spent or {}}


def _folder(root, name, budget, federated, references=None, target="Toys"):
    folder = root / name
    folder.mkdir()
    run_config = {"data-dir": "/d", "silos": "A,Toys", "target": target, "seed": 1, "cold-start-fraction": 0.5,
                  "merchants-per-category": 1, "delta": 1e-5, "epsilon-budget": budget}
    (folder / "config.json").write_text(json.dumps({"run_config": run_config}))
    rows = [{"method": m, "group": g, "num_users": 1, "metrics": {"ndcg@10": v}, "epsilon": None}
            for m, by_group in (references or {}).items() for g, v in by_group.items()]
    (folder / "comparison.json").write_text(json.dumps({"rows": rows, "federated": federated}))
    return folder


def test_the_curve_orders_points_and_computes_the_gain_kept(tmp_path):
    refs = {"popularity": {"cold-start": 0.10, "all": 0.20}, "target-only": {"cold-start": 0.11, "all": 0.25},
            "pooled": {"cold-start": 0.16, "all": 0.27}}
    a = _folder(tmp_path, "eps8", 8.0, {"nodp": _result(False, 0.14, 0.26), "dp": _result(True, 0.13, 0.23, {"A": 7.9, "Toys": 8.0})}, refs)
    b = _folder(tmp_path, "eps2", 2.0, {"dp": _result(True, 0.11, 0.21, {"A": 1.99, "Toys": 1.98})})
    curve = pu.collect([a, b])
    assert [(p["epsilon_budget"], p["dp"]) for p in curve["points"]] == [(2.0, True), (8.0, True), (None, False)]
    # gain over popularity: ε=8 keeps (0.13-0.10)/(0.14-0.10) = 0.75 cold, (0.23-0.20)/(0.26-0.20) = 0.5 all
    eps8 = curve["points"][1]
    assert eps8["gain_retained"] == pytest.approx({"cold-start": 0.75, "all": 0.5})
    assert curve["points"][0]["gain_retained"] == pytest.approx({"cold-start": 0.25, "all": 1 / 6})
    assert curve["points"][0]["epsilon_spent_max"] == 1.99
    assert curve["references"]["pooled"]["ndcg"] == {"cold-start": 0.16, "all": 0.27}

    out = tmp_path / "curve"
    assert pu.main([str(a), str(b), "--out", str(out)]) == 0
    md = (out / "privacy_utility.md").read_text()
    assert "| 8 | 8.000 | 0.1300 | 0.2300 | 0.75 | 0.50 |" in md
    assert "| ∞ (no DP) |  | 0.1400 | 0.2600 |  |  |" in md
    assert "| target-only | 0.1100 | 0.2500 |" in md
    assert (out / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "privacy_utility.json").read_text())["points"][2]["epsilon_budget"] is None


def test_folders_of_different_scenarios_are_not_mixed(tmp_path, capsys):
    a = _folder(tmp_path, "a", 8.0, {"dp": _result(True, 0.1, 0.2, {"A": 8.0})})
    b = _folder(tmp_path, "b", 4.0, {"dp": _result(True, 0.1, 0.2, {"A": 4.0})}, target="A")
    with pytest.raises(CrossrecError, match="target"):
        pu.collect([a, b])
    assert pu.main([str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (a / "comparison.json").write_text("{not json")
    assert pu.main([str(a), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("damage, message", [
    (lambda cfg, comp: comp["federated"]["nodp"].update(dp="false"), "dp must be true or false"),
    (lambda cfg, comp: cfg["run_config"].update({"epsilon-budget": -4}), "epsilon-budget must be a finite number > 0"),
    (lambda cfg, comp: comp["federated"]["dp"].update(epsilon_by_silo={"A": "big"}), "ε spent by A"),
    (lambda cfg, comp: comp["federated"]["dp"].update(epsilon_by_silo=[1]), "epsilon_by_silo must be a table"),
    (lambda cfg, comp: comp.update(federated=[1]), "not a comparison table"),
    (lambda cfg, comp: cfg.update(run_config=None), "no 'run_config' table"),
])
def test_damaged_folders_are_named_and_nothing_is_written(tmp_path, capsys, damage, message):
    folder = _folder(tmp_path, "a", 8.0, {"nodp": _result(False, 0.14, 0.26), "dp": _result(True, 0.13, 0.23, {"A": 7.9})})
    cfg, comp = (json.loads((folder / n).read_text()) for n in ("config.json", "comparison.json"))
    damage(cfg, comp)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "comparison.json").write_text(json.dumps(comp))
    out = tmp_path / "out"
    assert pu.main([str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_a_folder_given_twice_is_refused(tmp_path):
    a = _folder(tmp_path, "a", 8.0, {"dp": _result(True, 0.1, 0.2, {"A": 8.0})})
    with pytest.raises(CrossrecError, match="given twice"):
        pu.collect([a, a])
