import numpy as np
import pytest

from crossrec_core.aggregation import SiloUpdate, aggregate, apply_update

GLOBAL = {"t": np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], dtype=np.float32)}
# silo A trains rows 0 and 1; silo B trains rows 1 only; row 2 nobody trains. Only trained rows are sent.
A = SiloUpdate({"t": np.array([[2.0, 0.0], [1.0, 1.0]])}, {"t": np.array([0, 1])}, num_examples=30)
B = SiloUpdate({"t": np.array([[3.0, -1.0]])}, {"t": np.array([1])}, num_examples=10)


def test_row_mean_does_not_dilute_a_row_trained_by_one_silo():
    out = aggregate(GLOBAL, [A, B], rule="row-mean")["t"]
    # row 0: only A -> 1 + 2 = 3 (not 1 + 2/2); row 1: mean of (1,1) and (3,-1) = (2,0); row 2: unchanged
    np.testing.assert_allclose(out, [[3.0, 1.0], [4.0, 2.0], [3.0, 3.0]])
    assert out.dtype == np.float32


def test_fedavg_weights_by_examples_and_dilutes():
    out = aggregate(GLOBAL, [A, B], rule="fedavg")["t"]
    # weights 0.75 / 0.25; row 0: 1 + 0.75*2 = 2.5; row 1: 2 + 0.75*(1,1) + 0.25*(3,-1) = (3.5, 2.5)
    np.testing.assert_allclose(out, [[2.5, 1.0], [3.5, 2.5], [3.0, 3.0]])


def test_sum_adds_every_delta():
    out = aggregate(GLOBAL, [A, B], rule="sum")["t"]
    np.testing.assert_allclose(out, [[3.0, 1.0], [6.0, 2.0], [3.0, 3.0]])


def test_a_single_silo_gets_its_update_under_every_rule():
    for rule in ("row-mean", "sum"):
        np.testing.assert_allclose(aggregate(GLOBAL, [A], rule=rule)["t"], GLOBAL["t"] + np.array([[2, 0], [1, 1], [0, 0]]))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(GLOBAL, [A], rule="median")
    with pytest.raises(ValueError, match="no updates"):
        aggregate(GLOBAL, [], rule="sum")
    bad = {
        "does not match": SiloUpdate({"t": np.zeros((2, 2))}, {"t": None}, 1),
        "rows of": SiloUpdate({"t": np.zeros((2, 2))}, {"t": np.array([0])}, 1),
        "out of range": SiloUpdate({"t": np.zeros((1, 2))}, {"t": np.array([3])}, 1),
        "repeated": SiloUpdate({"t": np.zeros((2, 2))}, {"t": np.array([1, 1])}, 1),
        "integer": SiloUpdate({"t": np.zeros((1, 2))}, {"t": np.array([0.5])}, 1),
        "missing": SiloUpdate({}, {}, 1),
    }
    for message, update in bad.items():
        with pytest.raises(ValueError, match=message):
            aggregate(GLOBAL, [update], rule="row-mean")


def test_a_whole_tensor_update_counts_every_row():
    # a DP silo sends every row (rows=None); with A, row 0 is then trained by two silos
    whole = SiloUpdate({"t": np.array([[4.0, 0.0], [1.0, 1.0], [2.0, 2.0]])}, {"t": None}, 10)
    out = aggregate(GLOBAL, [A, whole], rule="row-mean")["t"]
    # row 0: mean((2,0),(4,0)) = (3,0); row 1: mean((1,1),(1,1)); row 2: only the whole-tensor silo
    np.testing.assert_allclose(out, [[4.0, 1.0], [3.0, 3.0], [5.0, 5.0]])


def test_dense_masks_convert_to_the_same_update():
    dense = SiloUpdate.from_dense({"t": np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]])}, {"t": np.array([1, 1, 0])}, 30)
    np.testing.assert_array_equal(dense.rows["t"], [0, 1])
    np.testing.assert_allclose(aggregate(GLOBAL, [dense, B], rule="row-mean")["t"], aggregate(GLOBAL, [A, B], rule="row-mean")["t"])
    assert SiloUpdate.from_dense({"t": np.zeros((3, 2))}, {"t": np.ones(3)}, 1).rows["t"] is None


def test_apply_update_adds_one_silos_rows():
    np.testing.assert_allclose(apply_update(GLOBAL, B)["t"], [[1.0, 1.0], [5.0, 1.0], [3.0, 3.0]])
    np.testing.assert_allclose(GLOBAL["t"], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # input untouched
