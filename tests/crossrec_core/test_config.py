"""RunConfig: the pyproject defaults, validation with one error naming every bad key, overrides."""

from __future__ import annotations

import pytest

from crossrec_core.config import RunConfig, load_config, load_defaults, parse_event_weights, parse_override
from crossrec_core.errors import ConfigError

# A complete, valid run_config (the keys of [tool.flwr.app.config]; values need not be the defaults).
PYPROJECT_DEFAULTS = {
    "data-dir": "data/amazon4",
    "silos": "Beauty,Sports,Clothing,Toys",
    "target": "Toys",
    "cold-start-fraction": 0.5,
    "seed": 2026,
    "federation-key": "crossrec-demo-federation-key",
    "shopper-table-size": 131072,
    "item-table-size": 131072,
    "embedding-dim": 32,
    "head": "finetune",
    "max-interactions-per-shopper": 20,
    "event-weights": "view=1.0,cart=2.0,purchase=4.0",
    "eval-negatives": 99,
    "loss": "bpr",
    "train-negatives": 1,
    "learning-rate": 0.005,
    "adam-beta1": 0.9,
    "dp-adam-beta1": 0.9,
    "l2": 0.01,
    "batch-size": 256,
    "dp-batch-size": 1024,
    "epochs": 10,
    "dp": True,
    "epsilon-budget": 8.0,
    "delta": 1e-5,
    "max-grad-norm": 1.0,
    "accountant": "rdp",
    "output-dir": "runs",
    "num-server-rounds": 5,
    "local-epochs": 1.0,
    "finetune-epochs": 2.0,
    "min-silos": 2,
    "merchants-per-category": 1,
    "aggregation": "row-mean",
    "run-dir": "",
    "round-timeout": 3600.0,
    "secure-noise": True,
    "private-transfer": "segments",
    "segments": 2,
    "segment-top-items": 64,
    "segment-kmeans-iters": 4,
    "segment-gaussian-share": 0.25,
}


def valid(**changes):
    mapping = dict(PYPROJECT_DEFAULTS)
    mapping.update(changes)
    return mapping


def problems_of(mapping) -> list[str]:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(mapping)
    return info.value.problems


def test_load_config_reads_pyproject_defaults():
    assert set(load_defaults()) == set(PYPROJECT_DEFAULTS)
    config = load_config()
    assert config.to_run_config() == load_defaults()
    assert config.target == "Toys" and config.dp is True
    assert config.delta == 1e-5
    assert config.silo_names == ("Beauty", "Sports", "Clothing", "Toys")
    assert config.source_names == ("Beauty", "Sports", "Clothing")
    assert config.event_weight_map == {"view": 1.0, "cart": 2.0, "purchase": 4.0}


def test_load_config_applies_overrides():
    config = load_config({"target": "Beauty", "epochs": 3})
    assert config.target == "Beauty" and config.epochs == 3
    assert config.source_names == ("Sports", "Clothing", "Toys")
    with pytest.raises(ConfigError, match="'epoch': unknown key"):
        load_config({"epoch": 3})
    with pytest.raises(ConfigError, match="'epochs' = 0: must be > 0"):
        load_config({"epochs": 0})


def test_load_config_from_another_pyproject(tmp_path):
    lines = ["[tool.flwr.app.config]"]
    for key, value in valid(target="Sports", seed=7).items():
        text = ("true" if value else "false") if isinstance(value, bool) else repr(value).replace("'", '"')
        lines.append(f"{key} = {text}")
    path = tmp_path / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    config = load_config(pyproject=path)
    assert config.target == "Sports" and config.seed == 7


def test_from_mapping_accepts_the_defaults_and_coerces():
    config = RunConfig.from_mapping(valid(epochs=3.0, dp="False", **{"learning-rate": 1}))
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.dp is False
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)


def test_unknown_key():
    problems = problems_of(valid(epoch=3))
    assert len(problems) == 1 and problems[0].startswith("'epoch': unknown key")
    assert "epochs" in problems[0]  # the known keys are listed


def test_missing_key():
    mapping = valid()
    del mapping["seed"]
    assert problems_of(mapping) == ["'seed': missing"]


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("epochs", "3", "must be an integer"),
        ("epochs", 2.5, "must be an integer"),
        ("seed", True, "must be an integer"),
        ("learning-rate", "fast", "must be a number"),
        ("delta", False, "must be a number"),
        ("dp", "yes", "must be true or false"),
        ("dp", 1, "must be true or false"),
        ("target", 3, "must be a string"),
    ],
)
def test_wrong_type(key, value, expected):
    problems = problems_of(valid(**{key: value}))
    assert problems == [f"{key!r} = {value!r}: {expected}"]


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("epochs", 0, "must be > 0"),
        ("seed", -1, "must be between 0 and 2**63 - 1"),
        ("seed", 2**64, "must be between 0 and 2**63 - 1"),
        ("epsilon-budget", 10**400, "is too large for a number"),
        ("learning-rate", 0.0, "must be > 0"),
        ("l2", -0.1, "must be >= 0"),
        ("adam-beta1", 1.0, "must be in [0, 1)"),
        ("dp-adam-beta1", -0.1, "must be in [0, 1)"),
        ("cold-start-fraction", 1.5, "must be between 0 and 1"),
        ("delta", 1.0, "must be strictly between 0 and 1"),
        ("delta", 0, "must be strictly between 0 and 1"),
        ("loss", "mse", "must be one of ('bpr', 'bce')"),
        ("accountant", "gdp", "must be one of ('rdp', 'prv')"),
        ("output-dir", "  ", "must not be empty"),
    ],
)
def test_out_of_range(key, value, expected):
    assert problems_of(valid(**{key: value})) == [f"{key!r} = {value!r}: {expected}"]


def test_range_edges_accepted():
    config = RunConfig.from_mapping(valid(**{"cold-start-fraction": 0.0, "seed": 0, "l2": 0}))
    assert config.cold_start_fraction == 0.0 and config.seed == 0
    assert RunConfig.from_mapping(valid(**{"cold-start-fraction": 1})).cold_start_fraction == 1.0


def test_target_not_in_silos():
    problems = problems_of(valid(target="Garden"))
    assert problems == ["'target' = 'Garden': not one of 'silos' (Beauty, Sports, Clothing, Toys)"]


def test_silo_named_twice():
    problems = problems_of(valid(silos="Beauty,Toys,Beauty"))
    assert problems == ["'silos' = 'Beauty,Toys,Beauty': names a silo twice"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("view=1,cart=abc", "weight of 'cart' is not a number: 'abc'"),
        ("view=0", "weight of 'view' must be > 0"),
        ("view=-2", "weight of 'view' must be > 0"),
        ("view", "entry 'view' is not of the form event=weight"),
        ("=3", "entry '=3' is not of the form event=weight"),
    ],
)
def test_bad_event_weights(text, expected):
    problems = problems_of(valid(**{"event-weights": text}))
    assert len(problems) == 1
    assert problems[0].startswith(f"'event-weights' = {text!r}: ") and expected in problems[0]


def test_parse_event_weights():
    assert parse_event_weights(" view = 1 , cart=2.5,, purchase=4 ") == {"view": 1.0, "cart": 2.5, "purchase": 4.0}
    assert parse_event_weights("") == {}


def test_one_error_lists_every_bad_key():
    mapping = valid(
        epochs="many",  # wrong type
        delta=2.0,  # out of range
        loss="hinge",  # not an allowed value
        target="Garden",  # not one of the silos
        bogus=1,  # unknown
        **{"event-weights": "view=1,cart=x"},  # bad event weights
    )
    del mapping["seed"]  # missing
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(mapping)
    error = info.value
    message = str(error)
    for key in ("'epochs'", "'delta'", "'loss'", "'target'", "'bogus'", "'event-weights'", "'seed'"):
        assert key in message, key
    assert len(error.problems) == 7
    assert message.startswith("invalid run config:")


def test_replace_validates():
    config = load_config()
    assert config.replace(target="Beauty", cold_start_fraction=0.25).cold_start_fraction == 0.25
    with pytest.raises(ConfigError, match="'target' = 'Garden'"):
        config.replace(target="Garden")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("target=Beauty", ("target", "Beauty")),
        ("epochs=3", ("epochs", 3)),
        (" epochs = 3 ", ("epochs", 3)),
        ("delta=1e-5", ("delta", 1e-5)),
        ("dp=false", ("dp", False)),
        ('target="Toys"', ("target", "Toys")),
        ("silos=Beauty,Toys", ("silos", "Beauty,Toys")),
        ("event-weights=view=1,cart=2", ("event-weights", "view=1,cart=2")),
    ],
)
def test_parse_override(text, expected):
    key, value = parse_override(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


def test_parse_override_result_feeds_load_config():
    config = load_config(dict([parse_override("target=Beauty"), parse_override("epochs=3")]))
    assert config.target == "Beauty" and config.epochs == 3


@pytest.mark.parametrize("text", ["epochs", "=3", ""])
def test_parse_override_rejects_non_assignments(text):
    with pytest.raises(ConfigError):
        parse_override(text)
