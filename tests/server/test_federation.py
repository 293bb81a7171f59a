import pytest

from server.federation import combine_test_metrics


def test_merchant_metrics_combine_as_means_weighted_by_group_size():
    parts = [
        {"cold-start/ndcg@10": 0.5, "cold-start/n": 2, "all/ndcg@10": 0.25, "all/n": 4},
        {"cold-start/ndcg@10": 0.0, "cold-start/n": 0, "all/ndcg@10": 0.5, "all/n": 6},
    ]
    out = combine_test_metrics(parts)
    assert out["cold-start"] == {"ndcg@10": 0.5, "n": 2}
    assert out["all"]["ndcg@10"] == pytest.approx((0.25 * 4 + 0.5 * 6) / 10)
    assert out["all"]["n"] == 10
