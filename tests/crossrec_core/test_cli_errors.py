"""Bad input at the command lines: a clear one-screen error and exit code 2, never a traceback."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crossrec_core import baselines, recommend
from crossrec_core.config import load_config
from crossrec_core.data import load_silo
from crossrec_core.errors import ConfigError, DataValidationError
from crossrec_core.silo import new_model, save_silo_model
from crossrec_core.splits import leave_one_out, sample_negatives


def write_silo(path, *, users=30, items=120, history=5, offset=0):
    rows = [f"u{u + offset},i{(u * history + p) % items},{p}" for u in range(users) for p in range(history)]
    path.write_text("user_id,item_id,position\n" + "\n".join(rows) + "\n")
    return path


def run_baselines(tmp_path, capsys, *extra):
    argv = ["--quiet", "--methods", "popularity", "-c", f"data-dir={tmp_path / 'data'}", "-c", "silos=A,B",
            "-c", "target=B", "-c", f"output-dir={tmp_path / 'out'}", *extra]
    code = baselines.main(argv)
    return code, capsys.readouterr().err


def test_catalogue_too_small_for_negatives_is_a_data_error(tmp_path):
    split = leave_one_out(load_silo(write_silo(tmp_path / "B.csv", items=20, offset=10)))
    with pytest.raises(DataValidationError, match="'eval-negatives'") as info:
        sample_negatives(split, k=99, seed=0)
    assert isinstance(info.value, ValueError)  # still a ValueError for older callers
    assert "np.str_" not in str(info.value)


def test_baselines_small_catalogue_exits_2_without_run_folder(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    write_silo(tmp_path / "data" / "A.csv")
    write_silo(tmp_path / "data" / "B.csv", items=20, offset=10)
    code, err = run_baselines(tmp_path, capsys)
    assert code == 2
    assert "catalogue too small" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("key", ["epsilon-budget", "learning-rate", "finetune-epochs", "round-timeout"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_numbers_are_rejected(key, value):
    with pytest.raises(ConfigError, match=f"'{key}' = {value}: must be a finite number"):
        load_config({key: value})


def test_validation_does_not_overflow_on_huge_integers():
    # a seed the generators cannot take, and a number too large for a float: named, not a traceback
    with pytest.raises(ConfigError) as err:
        load_config({"seed": 10**30, "learning-rate": 10**400})
    assert "'seed'" in str(err.value) and "'learning-rate'" in str(err.value)
    assert load_config({"seed": 2**63 - 1}).seed == 2**63 - 1


# ---- recommend -----------------------------------------------------------------------------


@pytest.fixture()
def tiny_run(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_silo(data / "A.csv")
    write_silo(data / "B.csv", offset=10)
    config = load_config({"data-dir": str(data), "silos": "A,B", "target": "B", "shopper-table-size": 64,
                          "item-table-size": 256, "embedding-dim": 4})
    run = tmp_path / "run" / "federated-nodp"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run_config": config.to_run_config()}))
    (run / "federated.json").write_text("{}")
    model = new_model(config, ["B"], sparse=False)
    save_silo_model(run / "silos" / "B", {k: v.numpy() for k, v in model.state_dict().items()})
    return run


def recommend_error(capsys, *argv) -> str:
    assert recommend.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_recommend_works_on_the_tiny_run(tiny_run, capsys):
    assert recommend.main([str(tiny_run.parent), "--silo", "B", "--shopper", "u12", "-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"model: {tiny_run}" and len(out) == 3  # which run's model, then the items


def test_recommend_folder_missing_or_a_file(tmp_path, capsys):
    assert "no such folder" in recommend_error(capsys, tmp_path / "nope", "--silo", "B", "--shopper", "u1")
    (tmp_path / "f").write_text("x")
    assert "is not a folder" in recommend_error(capsys, tmp_path / "f", "--silo", "B", "--shopper", "u1")


@pytest.mark.parametrize(
    "content, expected",
    [(None, "config.json: missing"), ("{not json", "config.json: cannot read"), ('{"x": 1}', "no 'run_config'")],
)
def test_recommend_bad_config_json(tiny_run, capsys, content, expected):
    path = tiny_run / "config.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    assert expected in recommend_error(capsys, tiny_run, "--silo", "B", "--shopper", "u12")


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "wrong-shape", "nan"])
def test_recommend_bad_model_file(tiny_run, capsys, damage):
    path = tiny_run / "silos" / "B" / "model.npz"
    if damage == "garbage":
        path.write_text("garbage")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "nan":
        arrays = {k: np.full_like(v, np.nan) for k, v in np.load(path).items()}
        np.savez(path, **arrays)
        assert "NaN or infinite" in recommend_error(capsys, tiny_run, "--silo", "B", "--shopper", "u12")
        return
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    else:
        arrays = dict(np.load(path))
        name = next(iter(arrays))
        arrays[name] = arrays[name][:3]
        np.savez(path, **arrays)
    err = recommend_error(capsys, tiny_run, "--silo", "B", "--shopper", "u12")
    assert f"{path}: not a usable model" in err

