import numpy as np
import pytest

from crossrec_core.aggregation import SiloUpdate, aggregate

GLOBAL = {"t": np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], dtype=np.float32)}
# silo A trains rows 0 and 1; silo B trains rows 1 only; row 2 nobody trains.
A = SiloUpdate({"t": np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]])}, {"t": np.array([1, 1, 0])}, num_examples=30)
B = SiloUpdate({"t": np.array([[0.0, 0.0], [3.0, -1.0], [0.0, 0.0]])}, {"t": np.array([0, 1, 0])}, num_examples=10)


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
    wrong = SiloUpdate({"t": np.zeros((2, 2))}, {"t": np.array([1, 1])}, 1)
    with pytest.raises(ValueError, match="does not match"):
        aggregate(GLOBAL, [wrong], rule="sum")
