import numpy as np
import pytest

from client import records as R
from crossrec_core.aggregation import SiloUpdate


def test_an_update_round_trips_through_an_array_record_with_only_its_rows():
    sparse = SiloUpdate({"a": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.ones((4, 2), np.float32)},
                        {"a": np.array([0, 5, 7]), "b": None}, num_examples=12)
    record = R.update_to_record(sparse)
    assert set(record) == {"a", "a" + R.ROWS_SUFFIX, "b"}  # no row list for a whole tensor
    back = R.update_from_record(record, ["a", "b"], 12)
    np.testing.assert_array_equal(back.deltas["a"], sparse.deltas["a"])
    np.testing.assert_array_equal(back.rows["a"], [0, 5, 7])
    assert back.rows["b"] is None and back.num_examples == 12


def test_an_update_missing_a_tensor_is_refused():
    record = R.update_to_record(SiloUpdate({"a": np.zeros((1, 2))}, {"a": None}, 1))
    with pytest.raises(ValueError, match="lacks"):
        R.update_from_record(record, ["a", "b"], 1)
