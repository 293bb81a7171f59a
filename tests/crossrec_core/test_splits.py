import numpy as np
import pytest

from crossrec_core.data import load_silo
from crossrec_core.scenario import COLD, build_scenario
from crossrec_core.splits import leave_one_out, sample_negatives, select_cold_start, withhold

CSV = """user_id,item_id,position
a,i1,0
a,i2,1
a,i3,2
a,i4,3
b,i4,2
b,i2,0
b,i5,1
"""


@pytest.fixture()
def small(tmp_path):
    path = tmp_path / "S.csv"
    path.write_text(CSV)
    return leave_one_out(load_silo(path))


def test_leave_one_out_takes_last_as_test_and_one_before_as_validation(small):
    items = list(small.item_ids)
    assert items == ["i1", "i2", "i3", "i4", "i5"]
    a, b = list(small.user_ids).index("a"), list(small.user_ids).index("b")
    assert items[small.test_item[a]] == "i4" and items[small.val_item[a]] == "i3"
    assert items[small.test_item[b]] == "i4" and items[small.val_item[b]] == "i5"
    train = sorted((small.user_ids[u], items[i]) for u, i in zip(small.train_user, small.train_item))
    assert train == [("a", "i1"), ("a", "i2"), ("b", "i2")]


def test_withhold_removes_only_training_rows_of_cold_shoppers(small):
    cold = np.array([True, False])
    split = withhold(small, cold)
    assert set(split.user_ids[split.train_user]) == {"b"}
    np.testing.assert_array_equal(split.test_item, small.test_item)
    np.testing.assert_array_equal(split.val_item, small.val_item)


def test_negatives_are_reproducible_distinct_and_unseen(tmp_path):
    rows = ["user_id,item_id,position"] + [f"u{u},i{(u * 7 + k) % 300},{k}" for u in range(40) for k in range(5)]
    path = tmp_path / "N.csv"
    path.write_text("\n".join(rows) + "\n")
    split = leave_one_out(load_silo(path))
    first = sample_negatives(split, k=99, seed=3)
    again = sample_negatives(split, k=99, seed=3)
    other = sample_negatives(split, k=99, seed=4)
    np.testing.assert_array_equal(first.test, again.test)
    np.testing.assert_array_equal(first.val, again.val)
    assert not np.array_equal(first.test, other.test)
    users, items = split.seen_items
    for u in range(split.num_users):
        seen = set(items[users == u].tolist())
        for negs in (first.val[u], first.test[u]):
            assert len(set(negs.tolist())) == 99
            assert not seen & set(negs.tolist())


def test_negatives_refuse_a_catalogue_too_small(small):
    with pytest.raises(ValueError, match="fewer than the 99"):
        sample_negatives(small, k=99, seed=0)


def test_cold_start_selection_takes_the_fraction_of_overlapping_shoppers(small):
    mask = select_cold_start(small, {"a", "b", "z"}, fraction=0.5, key="k", seed=0)
    assert mask.sum() == 1
    assert select_cold_start(small, {"b"}, fraction=1.0, key="k", seed=0).tolist() == [False, True]
    assert select_cold_start(small, set(), fraction=1.0, key="k", seed=0).sum() == 0


def test_no_held_out_interaction_reaches_training_on_the_real_data(real_scenario):
    for name, split in real_scenario.splits.items():
        held_out = set(split.val_row.tolist()) | set(split.test_row.tolist())
        assert not held_out & set(split.train_row.tolist()), name
        assert not split.cold[split.train_user].any(), name
        data = real_scenario.shopper_data(name)
        # every item a training sample holds is one of that shopper's training items
        train_by_user = split.train_items_of()
        for s in range(0, len(data), 97):
            u = data.shoppers[s]
            present = data.weight[s] > 0
            assert set(data.items[s][present].tolist()) <= set(train_by_user[u].tolist())
    target = real_scenario.target
    groups = real_scenario.groups()
    assert len(groups[COLD]) == 2206  # half of the 4,412 Toys shoppers who also shop elsewhere
    assert target.cold.sum() == 2206
