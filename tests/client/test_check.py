"""The silo operator's check command: same validation as the ClientApp, every problem, exit codes."""

from client import check


def _args(_data_dir, node_config: str):
    return ["--node-config", node_config, "-c", "silos=Beauty,Toys", "-c", "shopper-table-size=8192",
            "-c", "item-table-size=8192", "-c", "num-server-rounds=2", "-c", "private-transfer=dp-sgd"]


def test_a_ready_silo_is_described_with_its_privacy_plan(data_slice, capsys):
    code = check.main(_args(data_slice, f"silo='Toys' data-dir='{data_slice}' epsilon-budget=4"))
    out = capsys.readouterr().out
    assert code == 0 and "ready to join" in out
    assert "silo Toys (category Toys, the target)" in out and "ε budget 4.0" in out and "noise multiplier" in out


def test_every_problem_of_a_node_config_is_named(data_slice, capsys):
    assert check.main(_args(data_slice, "silo='Toys' data-dir='relative/path' delta=2.0")) == 2
    err = capsys.readouterr().err
    assert "absolute path" in err and "'delta'" in err


def test_a_missing_folder_an_unknown_silo_and_a_bad_string_are_errors(data_slice, tmp_path, capsys):
    assert check.main(_args(data_slice, f"silo='Toys' data-dir='{tmp_path / 'none'}'")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert check.main(_args(data_slice, f"silo='Garden' data-dir='{data_slice}'")) == 2
    assert "unknown silo 'Garden'" in capsys.readouterr().err
    assert check.main(_args(data_slice, "silo=Toys data-dir")) == 2
    assert "cannot parse --node-config" in capsys.readouterr().err


def test_an_impossible_budget_is_refused_before_joining(data_slice, capsys):
    assert check.main(_args(data_slice, f"silo='Beauty' data-dir='{data_slice}' epsilon-budget=1e-7")) == 2
    assert "cannot meet" in capsys.readouterr().err
