import numpy as np
import pytest

from crossrec_core import silo as silo_module
from crossrec_core.errors import PrivacyError
from crossrec_core.scenario import build_scenario
from crossrec_core.silo import (
    ITEM_TABLE,
    SHOPPER_TABLE,
    category_of,
    initial_shared,
    load_view,
    merchant_of,
    check_privacy_plans,
    plan_privacy,
    train_round,
)


@pytest.fixture(scope="module")
def small_config(slice_config):
    # DP here means DP-SGD rounds (the segment release has its own tests below)
    return slice_config.replace(**{"silos": "Beauty,Toys", "num-server-rounds": 2, "local-epochs": 1.0,
                                   "finetune-epochs": 1.0, "embedding-dim": 8, "private-transfer": "dp-sgd"})


def test_category_of_names_categories_and_merchants(small_config):
    assert category_of("Toys", small_config) == ("Toys", 0)
    merchants = small_config.replace(**{"merchants-per-category": 3})
    assert merchants.node_silos == ("Beauty-1", "Beauty-2", "Beauty-3", "Toys-1", "Toys-2", "Toys-3")
    assert category_of("Toys-3", merchants) == ("Toys", 2)
    for bad in ("Toys", "Toys-4", "Toys-0", "Garden-1"):
        with pytest.raises(ValueError, match="unknown silo"):
            category_of(bad, merchants)


def test_merchants_partition_a_category_with_the_same_catalogue(small_config):
    config = small_config.replace(**{"merchants-per-category": 3})
    whole = build_scenario(config, silos=("Toys",))
    views = [load_view(config, f"Toys-{j}") for j in (1, 2, 3)]
    shoppers = [set(v.split.user_ids.tolist()) for v in views]
    assert set.union(*shoppers) == set(whole.target.user_ids.tolist())
    assert sum(len(s) for s in shoppers) == whole.target.num_users  # disjoint
    assert all(np.array_equal(v.split.item_ids, whole.target.item_ids) for v in views)
    assert sum(int(v.split.cold.sum()) for v in views) == int(whole.target.cold.sum())
    # each merchant's negatives are the category's negatives of its shoppers
    first = views[0]
    index = {u: i for i, u in enumerate(whole.target.user_ids)}
    rows = [index[u] for u in first.split.user_ids]
    np.testing.assert_array_equal(first.negatives.test, whole.negatives("Toys").test[rows])
    assert (merchant_of(np.array(["a", "b", "c"]), key="k", merchants=1) == 0).all()


def test_a_round_sends_only_the_deltas_of_the_shared_rows_it_trained(small_config, monkeypatch):
    config = small_config.replace(dp=False)
    view = load_view(config, "Beauty")
    shared = initial_shared(config)
    seen = {}
    real_split = silo_module.split_state

    def capture(state):
        out = real_split(state)
        seen["shared"] = {k: v.numpy().copy() for k, v in out[0].items()}
        return out

    monkeypatch.setattr(silo_module, "split_state", capture)
    result = train_round(view, shared, None, None, epochs=1.0, round_number=1, phase="pretrain")
    update = result.update
    assert set(update.deltas) == {SHOPPER_TABLE, ITEM_TABLE}
    assert all(k.startswith(("heads.Beauty", "item_bias.Beauty")) for k in result.private)
    # the rows sent are the keyed rows of the silo's shoppers with training data and of its catalogue
    trained_users = np.unique(view.split.train_user)
    np.testing.assert_array_equal(update.rows[SHOPPER_TABLE], np.unique(view.user_rows[trained_users]))
    np.testing.assert_array_equal(update.rows[ITEM_TABLE], np.unique(view.catalogue_rows))
    for name in (SHOPPER_TABLE, ITEM_TABLE):
        full_delta = seen["shared"][name] - shared[name]
        rows = update.rows[name]
        np.testing.assert_allclose(update.deltas[name], full_delta[rows], atol=1e-6)
        # non-private training moved no row outside them, so nothing is lost by sending only those
        outside = np.ones(len(full_delta), dtype=bool)
        outside[rows] = False
        assert not np.abs(full_delta[outside]).any()
        assert np.abs(update.deltas[name]).sum() > 0


def test_a_dp_round_sends_every_shopper_row_and_the_catalogue_item_rows(small_config):
    config = small_config.replace(**{"dp": True, "epsilon-budget": 50.0})
    view = load_view(config, "Beauty")
    shared = initial_shared(config)
    result = train_round(view, shared, None, None, epochs=0.2, round_number=1, phase="pretrain")
    shopper = result.update.deltas[SHOPPER_TABLE]
    assert result.update.rows[SHOPPER_TABLE] is None and shopper.shape == shared[SHOPPER_TABLE].shape
    # noise reaches shopper rows no shopper of the silo uses: every row moved
    assert np.count_nonzero(np.abs(shopper).sum(1)) == len(shared[SHOPPER_TABLE])
    # item rows: exactly the catalogue's, each of them noised
    catalogue = np.unique(view.catalogue_rows)
    assert np.array_equal(result.update.rows[ITEM_TABLE], catalogue)
    items = result.update.deltas[ITEM_TABLE]
    assert items.shape == (len(catalogue), config.embedding_dim) and np.count_nonzero(np.abs(items).sum(1)) == len(catalogue)


def test_a_silo_never_spends_beyond_its_budget(small_config):
    config = small_config.replace(**{"dp": True, "epsilon-budget": 2.0, "private-transfer": "dp-sgd"})
    view = load_view(config, "Beauty")  # a source silo: its plan is exactly the 2 pre-training rounds
    plan = plan_privacy(view)
    assert plan.planned_steps == 2 * plan.steps_per_round and plan.finetune_steps == 0
    shared, ledger, spent = initial_shared(config), None, []
    private = None
    for r in (1, 2):
        result = train_round(view, shared, private, ledger, epochs=1.0, round_number=r, phase="pretrain")
        ledger, private = result.ledger, result.private
        spent.append(result.metrics["epsilon"])
        assert result.metrics["epsilon-remaining"] == pytest.approx(2.0 - spent[-1])
    assert spent[0] < spent[1] <= 2.0
    assert spent[1] == pytest.approx(2.0, abs=0.02)
    assert [e["round"] for e in ledger.entries] == [1, 2] and ledger.steps == plan.planned_steps
    # the third round, and even one more step, would exceed the budget: refused and recorded
    for epochs in (1.0, 1.0 / plan.steps_per_round):
        with pytest.raises(PrivacyError, match="refusing"):
            train_round(view, shared, private, ledger, epochs=epochs, round_number=3, phase="pretrain")
    assert len(ledger.refusals) == 2 and ledger.spent == spent[1] <= 2.0
    assert all(r["projected_epsilon"] > 2.0 for r in ledger.refusals)


def test_an_impossible_plan_names_every_silo_before_training(small_config):
    config = small_config.replace(**{"dp": True, "epsilon-budget": 1e-4, "delta": 1e-12})
    with pytest.raises(PrivacyError, match=r"(?s)nothing was trained.*Beauty.*Toys.*too small"):
        check_privacy_plans(config, build_scenario(config))
    plans = check_privacy_plans(small_config.replace(dp=True), build_scenario(small_config))
    assert set(plans) == set(small_config.silo_names)


def test_dp_randomness_is_secret_by_default_and_reproducible_only_when_asked(small_config):
    def two_rounds(config):
        view = load_view(config, "Beauty")
        shared = initial_shared(config)
        runs = [train_round(view, shared, None, None, epochs=0.2, round_number=1, phase="pretrain") for _ in range(2)]
        assert {r.ledger.noise_seed for r in runs} == {"secret" if config.secure_noise else "run seed"}
        return [r.update.deltas[SHOPPER_TABLE] for r in runs]

    base = small_config.replace(**{"dp": True, "epsilon-budget": 50.0})
    secret = two_rounds(base)  # the same call twice: the noise differs (not derivable from the run seed)
    assert not np.array_equal(secret[0], secret[1])
    seeded = two_rounds(base.replace(**{"secure-noise": False}))
    assert np.array_equal(seeded[0], seeded[1])


@pytest.mark.parametrize("segments", [2, 4])
def test_a_segment_release_spends_the_budget_once_with_secret_randomness(small_config, segments):
    from crossrec_core.silo import fit_segments, new_ledger, release_segments

    config = small_config.replace(**{"dp": True, "private-transfer": "segments", "segments": segments,
                                     "epsilon-budget": 2.0, "shopper-table-size": 8192})
    view = load_view(config, "Beauty")
    releases = []
    for secure in (True, True, False, False):
        c = config.replace(**{"secure-noise": secure})
        v = load_view(c, "Beauty")
        ledger = new_ledger(v)
        values, metrics = release_segments(v, ledger)
        assert values.dtype == np.uint8 and values.shape == (8192,) and values.max() < segments
        assert ledger.spent == pytest.approx(2.0, abs=0.01) and ledger.spent <= 2.0 + 1e-9
        assert metrics["epsilon"] == ledger.spent
        releases.append(values)
        with pytest.raises(PrivacyError):  # a second release would exceed the budget
            release_segments(v, ledger)
        assert len(ledger.refusals) == 1
    assert not np.array_equal(releases[0], releases[1])  # secret: fresh noise every call
    assert np.array_equal(releases[2], releases[3])  # run seed: reproducible
    # the target fits from the release and is tested on its own shoppers
    target = load_view(config, "Toys")
    rr = new_ledger(view).planned_pure_epsilon
    model, test, metrics = fit_segments(target, {"Beauty": releases[0]}, {"Beauty": rr})
    assert set(test) == {"cold-start", "all"} and test["all"]["n"] == target.split.num_users
    assert 0 <= metrics["mix-weight/without-history"] <= 1.0
    with pytest.raises(ValueError, match="randomized-response"):
        fit_segments(target, {"Beauty": releases[0]}, {})
