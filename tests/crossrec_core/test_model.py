import numpy as np
import pytest
import torch

from crossrec_core.model import CrossRecModel, is_shared, split_state


def small_model(**kw):
    return CrossRecModel(shopper_rows=50, item_rows=40, dim=4, silos=kw.pop("silos", ["Toys", "Beauty"]), **kw)


def test_split_state_shares_only_the_shopper_and_item_tables():
    shared, private = split_state(small_model().state_dict())
    assert sorted(shared) == ["item_table.weight", "shopper_table.weight"]
    assert sorted(private) == [
        "heads.Beauty.bias", "heads.Beauty.weight", "heads.Toys.bias", "heads.Toys.weight",
        "item_bias.Beauty.weight", "item_bias.Toys.weight",
    ]
    assert not any(is_shared(k) for k in private)


def test_score_is_head_of_summed_shopper_rows_dot_summed_item_rows_plus_biases():
    model = small_model()
    with torch.no_grad():
        model.shopper_table.weight.zero_()
        model.shopper_table.weight[3] = torch.tensor([1.0, 0, 0, 0])
        model.shopper_table.weight[7] = torch.tensor([0, 2.0, 0, 0])
        model.item_table.weight.zero_()
        model.item_table.weight[5] = torch.tensor([3.0, 0, 0, 0])
        model.item_table.weight[6] = torch.tensor([0, 1.0, 0, 1.0])
        model.item_bias["Toys"].weight[5] = 0.5
        model.heads["Toys"].weight.mul_(2.0)  # head doubles the shopper vector
    user_rows = torch.tensor([[3, 7]])
    item_rows = torch.tensor([[[[5, 6]]]])
    scores, user_sq, item_sq = model(user_rows, item_rows, "Toys")
    # shopper (1,2,0,0) -> head (2,4,0,0); item (3,1,0,1); dot = 6 + 4 = 10; bias 0.5 (+0 for row 6)
    assert scores.item() == pytest.approx(10.5)
    assert user_sq.item() == pytest.approx(5.0)
    assert item_sq.item() == pytest.approx(11.0)
    # the Beauty head is still the identity: dot = 3 + 2 = 5, no bias
    assert model(user_rows, item_rows, "Beauty")[0].item() == pytest.approx(5.0)


def test_bad_silo_names_are_refused():
    with pytest.raises(ValueError, match="may only hold"):
        small_model(silos=["Toys.and.games"])
