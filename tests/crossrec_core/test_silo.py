import numpy as np
import pytest

from crossrec_core.config import load_config
from crossrec_core.errors import PrivacyError
from crossrec_core.scenario import build_scenario
from crossrec_core.silo import (
    ITEM_TABLE,
    SHOPPER_TABLE,
    category_of,
    initial_shared,
    load_view,
    merchant_of,
    plan_privacy,
    train_round,
)


@pytest.fixture(scope="module")
def small_config(slice_config):
    return slice_config.replace(**{"silos": "Beauty,Toys", "num-server-rounds": 2, "local-epochs": 1.0,
                                   "finetune-epochs": 1.0, "embedding-dim": 8})


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


def test_a_round_returns_deltas_of_shared_tensors_only_and_masks_of_trained_rows(small_config):
    config = small_config.replace(dp=False)
    view = load_view(config, "Beauty")
    shared = initial_shared(config)
    result = train_round(view, shared, None, None, epochs=1.0, round_number=1, phase="pretrain")
    assert set(result.deltas) == {SHOPPER_TABLE, ITEM_TABLE}
    assert all(k.startswith(("heads.Beauty", "item_bias.Beauty")) for k in result.private)
    # non-private training moves exactly the rows the silo's shoppers and catalogue use
    moved = np.abs(result.deltas[SHOPPER_TABLE]).sum(1) > 0
    assert moved.any() and not (moved & (result.rows[SHOPPER_TABLE] == 0)).any()
    assert result.rows[ITEM_TABLE].sum() <= view.split.num_items * 2


def test_a_silo_never_spends_beyond_its_budget(small_config):
    config = small_config.replace(**{"dp": True, "epsilon-budget": 2.0})
    view = load_view(config, "Beauty")  # a source silo: its plan is exactly the 2 pre-training rounds
    plan = plan_privacy(view)
    assert plan.planned_steps == 2 * plan.steps_per_round and plan.finetune_steps == 0
    shared, state, spent = initial_shared(config), None, []
    private = None
    for r in (1, 2):
        result = train_round(view, shared, private, state, epochs=1.0, round_number=r, phase="pretrain")
        state, private = result.accountant_state, result.private
        spent.append(result.metrics["epsilon"])
    assert spent[0] < spent[1] <= 2.0
    assert spent[1] == pytest.approx(2.0, abs=0.02)
    with pytest.raises(PrivacyError, match="refusing"):
        train_round(view, shared, private, state, epochs=1.0, round_number=3, phase="pretrain")
