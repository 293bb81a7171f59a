"""Ranking metrics with hand-computed values, and `evaluate` on a tiny hand-made split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossrec_core.data import load_silo
from crossrec_core.evaluation import (
    FULL_NDCG,
    FULL_RECALL,
    HR,
    MRR,
    NDCG,
    FunctionScorer,
    Scorer,
    evaluate,
    hit_rate,
    ndcg,
    rank_counts,
    reciprocal_rank,
)
from crossrec_core.splits import EvalNegatives, leave_one_out


def lg(x: float) -> float:
    return math.log2(x)


# (greater, ties, HR@10, NDCG@10, MRR), every value worked out by hand: the rank is uniform on g..g+t,
# rank r (0-based) earns 1/log2(r+2) of NDCG if r < 10 and 1/(r+1) of MRR.
CASES = [
    (0, 0, 1.0, 1.0, 1.0),
    (0, 1, 1.0, (1 + 1 / lg(3)) / 2, (1 + 1 / 2) / 2),
    (3, 2, 1.0, (1 / lg(5) + 1 / lg(6) + 1 / lg(7)) / 3, (1 / 4 + 1 / 5 + 1 / 6) / 3),
    (9, 0, 1.0, 1 / lg(11), 1 / 10),
    (10, 0, 0.0, 0.0, 1 / 11),
    (8, 3, 2 / 4, (1 / lg(10) + 1 / lg(11)) / 4, (1 / 9 + 1 / 10 + 1 / 11 + 1 / 12) / 4),
    (12, 5, 0.0, 0.0, (1 / 13 + 1 / 14 + 1 / 15 + 1 / 16 + 1 / 17 + 1 / 18) / 6),
]


@pytest.mark.parametrize("g,t,hr,nd,rr", CASES)
def test_metrics_single(g, t, hr, nd, rr):
    assert hit_rate(np.array([g]), np.array([t]))[0] == pytest.approx(hr, abs=1e-12)
    assert ndcg(np.array([g]), np.array([t]))[0] == pytest.approx(nd, abs=1e-12)
    assert reciprocal_rank(np.array([g]), np.array([t]))[0] == pytest.approx(rr, rel=1e-12)


def test_metrics_vectorised():
    g = np.array([c[0] for c in CASES])
    t = np.array([c[1] for c in CASES])
    np.testing.assert_allclose(hit_rate(g, t), [c[2] for c in CASES], atol=1e-12)
    np.testing.assert_allclose(ndcg(g, t), [c[3] for c in CASES], atol=1e-12)
    np.testing.assert_allclose(reciprocal_rank(g, t), [c[4] for c in CASES], rtol=1e-12)


def test_constant_scores_earn_chance_level():
    # 100 candidates (positive + 99 negatives) all tied: rank uniform on 0..99.
    g, t = np.array([0]), np.array([99])
    assert hit_rate(g, t)[0] == pytest.approx(10 / 100)
    assert ndcg(g, t)[0] == pytest.approx(sum(1 / lg(r + 2) for r in range(10)) / 100)
    assert reciprocal_rank(g, t)[0] == pytest.approx(sum(1 / n for n in range(1, 101)) / 100)


def test_cutoff_k():
    g, t = np.array([2, 2]), np.array([0, 1])
    assert hit_rate(g, t, k=2).tolist() == [0.0, 0.0]
    assert hit_rate(g, t, k=3).tolist() == [1.0, 0.5]
    assert ndcg(g, t, k=3) == pytest.approx([1 / lg(4), 1 / lg(4) / 2])


def test_rank_counts_with_and_without_mask():
    pos = np.array([1.0, 0.5])
    cand = np.array([[2.0, 1.0, 0.0, 1.0], [0.5, 0.5, 1.0, 0.0]])
    g, t = rank_counts(pos, cand)
    assert g.tolist() == [1, 1] and t.tolist() == [2, 2]
    valid = np.array([[True, False, True, True], [True, True, False, True]])
    g, t = rank_counts(pos, cand, valid)
    # row 0: 2.0 beats 1.0; of the two 1.0 ties only column 3 is valid.
    # row 1: the only better candidate (1.0) is masked; both 0.5 ties are valid.
    assert g.tolist() == [1, 0] and t.tolist() == [1, 2]


# ---- evaluate on a tiny hand-made split ---------------------------------------------------------
#
# Items are i00..i19 (local index = number, as ids sort). Shoppers (local index):
#   a (0): i00 i01 i02 i03          -> train {0, 1}, val 2, test 3
#   b (1): i13 i05 i04              -> train {13},   val 5, test 4
#   c (2): i06 .. i12               -> train {6..10}, val 11, test 12
#   d (3): i14 .. i19               -> filler, not evaluated
# The scorer gives item i the score i // 2 for i < 14 (ties in pairs) and -1 to the fillers i14..i19,
# the same for every shopper.

ROWS = (
    [("c", f"i{6 + p:02d}", p) for p in range(7)]
    + [("b", "i04", 2), ("a", "i03", 3), ("a", "i00", 0), ("b", "i13", 0)]
    + [("d", f"i{14 + p:02d}", p) for p in range(6)]
    + [("a", "i02", 2), ("b", "i05", 1), ("a", "i01", 1)]
)
SCORES = np.array([i // 2 if i < 14 else -1 for i in range(20)], dtype=np.float64)

# Sampled negatives (10 per shopper, none of them an item the shopper has).
TEST_NEGS = [
    [4, 5, 6, 7, 8, 9, 10, 11, 12, 13],  # a
    [0, 1, 2, 3, 6, 7, 8, 9, 14, 15],  # b
    [0, 1, 2, 3, 4, 5, 13, 14, 15, 16],  # c
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # d
]
VAL_NEGS = [
    [4, 5, 6, 7, 8, 9, 10, 11, 14, 15],  # a
    [0, 1, 2, 3, 8, 9, 10, 11, 12, 16],  # b
    [0, 1, 2, 3, 4, 5, 13, 14, 15, 16],  # c
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # d
]


@pytest.fixture()
def split(tmp_path):
    path = tmp_path / "Tiny.csv"
    path.write_text("user_id,item_id,position\n" + "".join(f"{u},{i},{p}\n" for u, i, p in ROWS))
    s = leave_one_out(load_silo(path))
    # The layout the hand computation below relies on.
    assert s.user_ids.tolist() == ["a", "b", "c", "d"]
    assert s.item_ids.tolist() == [f"i{i:02d}" for i in range(20)]
    assert s.val_item.tolist()[:3] == [2, 5, 11] and s.test_item.tolist()[:3] == [3, 4, 12]
    assert [x.tolist() for x in s.train_items_of()[:3]] == [[0, 1], [13], [6, 7, 8, 9, 10]]
    return s


NEGATIVES = EvalNegatives(val=np.array(VAL_NEGS, dtype=np.int64), test=np.array(TEST_NEGS, dtype=np.int64))


class ItemScorer(Scorer):
    def __init__(self):
        self.calls = []

    def score(self, users, items):
        self.calls.append(len(users))
        return SCORES[items]

    def score_all(self, users):
        return np.tile(SCORES, (len(users), 1))


# Test stage.
# Sampled: a: pos 3 (score 1), all 10 negatives score 2..6       -> g=10, t=0
#          b: pos 4 (score 2), 6,7,8,9 score 3,3,4,4, rest lower  -> g=4,  t=0
#          c: pos 12 (score 6), 13 ties (6), rest lower            -> g=0,  t=1
TEST_SAMPLED = {
    HR: (0 + 1 + 1) / 3,
    NDCG: (0 + 1 / lg(6) + (1 + 1 / lg(3)) / 2) / 3,
    MRR: (1 / 11 + 1 / 5 + (1 + 1 / 2) / 2) / 3,
}
# Full, minus training items, the validation item and the positive itself:
#   a: pos 3 (1); candidates 4..19; 4..13 score 2..6 -> g=10, t=0 (item 2, also score 1, is the val item)
#   b: pos 4 (2); candidates 0..3, 6..12, 14..19; 6..12 better -> g=7; item 5 (score 2) is the val item -> t=0
#   c: pos 12 (6); candidates 0..5, 13..19; 13 ties -> g=0, t=1
TEST_FULL = {
    FULL_RECALL: (0 + 1 + 1) / 3,
    FULL_NDCG: (0 + 1 / lg(9) + (1 + 1 / lg(3)) / 2) / 3,
}
# Validation stage.
# Sampled: a: pos 2 (1); negatives 4..11 better, 14, 15 lower     -> g=8, t=0
#          b: pos 5 (2); 8..12 better (4,4,5,5,6)                  -> g=5, t=0
#          c: pos 11 (5); 13 better (6)                            -> g=1, t=0
VAL_SAMPLED = {
    HR: 1.0,
    NDCG: (1 / lg(10) + 1 / lg(7) + 1 / lg(3)) / 3,
    MRR: (1 / 9 + 1 / 6 + 1 / 2) / 3,
}
# Full, minus training items and the positive (the test item stays a candidate):
#   a: pos 2 (1); 4..13 better -> g=10; test item 3 ties -> t=1: ranks 10, 11
#   b: pos 5 (2); 6..12 better -> g=7; test item 4 ties -> t=1: ranks 7, 8
#   c: pos 11 (5); 12 (the test item) and 13 better -> g=2, t=0 (10, the other 5, is training)
VAL_FULL = {
    FULL_RECALL: (0 + 1 + 1) / 3,
    FULL_NDCG: (0 + (1 / lg(9) + 1 / lg(10)) / 2 + 1 / lg(4)) / 3,
}


def check(result, expected):
    assert set(result.metrics) == set(expected)
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("batch_size", [1024, 2])
def test_evaluate_test_stage(split, batch_size):
    scorer = ItemScorer()
    result = evaluate(scorer, split, NEGATIVES, np.array([0, 1, 2]), stage="test", batch_size=batch_size)
    assert result.num_users == 3
    check(result, {**TEST_SAMPLED, **TEST_FULL})
    assert scorer.calls == ([3] if batch_size == 1024 else [2, 1])


def test_evaluate_val_stage(split):
    result = evaluate(ItemScorer(), split, NEGATIVES, np.array([0, 1, 2]), stage="val")
    check(result, {**VAL_SAMPLED, **VAL_FULL})


def test_evaluate_sampled_only(split):
    result = evaluate(ItemScorer(), split, NEGATIVES, np.array([0, 1, 2]), stage="test", full=False)
    check(result, TEST_SAMPLED)


def test_evaluate_subset_of_shoppers(split):
    # Only b: the mean is b's own values.
    result = evaluate(ItemScorer(), split, NEGATIVES, np.array([1]), stage="test")
    check(result, {HR: 1.0, NDCG: 1 / lg(6), MRR: 1 / 5, FULL_RECALL: 1.0, FULL_NDCG: 1 / lg(9)})


def test_evaluate_no_shoppers(split):
    result = evaluate(ItemScorer(), split, NEGATIVES, np.array([], dtype=np.int64))
    assert result.num_users == 0
    assert all(math.isnan(v) for v in result.metrics.values())


def test_evaluate_constant_scorer_is_chance(split):
    scorer = FunctionScorer(
        lambda users, items: np.zeros(items.shape), lambda users: np.zeros((len(users), 20))
    )
    result = evaluate(scorer, split, NEGATIVES, np.array([0, 1, 2]), stage="test")
    # Sampled: 11 candidates all tied -> rank uniform on 0..10.
    assert result.metrics[HR] == pytest.approx(10 / 11)
    assert result.metrics[MRR] == pytest.approx(sum(1 / n for n in range(1, 12)) / 11)
    # Full: a has 20 - 2 train - 1 val - 1 pos = 16 competitors, b 20 - 1 - 1 - 1 = 17, c 20 - 5 - 1 - 1 = 13.
    assert result.metrics[FULL_RECALL] == pytest.approx((10 / 17 + 10 / 18 + 10 / 14) / 3)
