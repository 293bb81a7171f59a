import json

import pytest

from crossrec_core.baselines import main, run_baselines
from crossrec_core.config import load_config
from crossrec_core.scenario import ALL, COLD, build_scenario


@pytest.mark.slow
def test_baselines_command_writes_the_table_for_both_groups(slice_config, tmp_path, capsys):
    overrides = [f"{k}={v}" for k, v in {
        "data-dir": f'"{slice_config.data_dir}"', "epochs": 2, "output-dir": f'"{tmp_path}"',
        "shopper-table-size": 16384, "item-table-size": 16384,
    }.items()]
    args = [a for o in overrides for a in ("-c", o)] + ["--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| pooled | cold-start |" in out and "| popularity | all |" in out
    run_dir = next(tmp_path.glob("baselines-*"))
    table = json.loads((run_dir / "comparison.json").read_text())
    methods = {(r["method"], r["group"]) for r in table["rows"]}
    assert methods == {(m, g) for m in ("popularity", "target-only", "pooled") for g in (COLD, ALL)}
    for row in table["rows"]:
        assert set(row["metrics"]) == {"hr@10", "ndcg@10", "mrr", "full_recall@10", "full_ndcg@10"}
        assert all(0.0 <= v <= 1.0 for v in row["metrics"].values())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_config"]["epochs"] == 2 and "package" in config["code_version"]
    assert (run_dir / "comparison.md").read_text().startswith("# Baselines on target Toys")


def test_bad_override_exits_with_a_message_and_no_run_folder(tmp_path, capsys):
    assert main(["-c", "target=Garden", "-c", f'output-dir="{tmp_path}"', "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'target' = 'Garden'" in err
    assert not list(tmp_path.iterdir())
