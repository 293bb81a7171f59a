import math

import numpy as np
import pytest
from scipy.stats import norm

from crossrec_core.errors import PrivacyError
from crossrec_core.privacy import PrivacyLedger, epsilon_of, federation_figure
from crossrec_core.segments import (
    fit_segment_model,
    has_history,
    keep_probability,
    plan_segments,
    randomized_response,
    release,
    shopper_segments,
    table_values,
    target_features,
)
from crossrec_core.splits import EvalNegatives, SiloSplit


def test_keep_probability_by_hand():
    assert keep_probability(2, math.log(3)) == pytest.approx(3 / 4)  # 3 / (3 + 1)
    assert keep_probability(8, math.log(7)) == pytest.approx(0.5)  # 7 / (7 + 7)
    with pytest.raises(ValueError):
        keep_probability(1, 1.0)
    with pytest.raises(ValueError):
        keep_probability(4, 0.0)


def test_randomized_response_output_distribution_matches_its_epsilon():
    # K = 3, ε = ln 3: keep with 3 / 5, each other value 1 / 5; the largest ratio of output
    # probabilities between two inputs is (3/5) / (1/5) = 3 = e^ε
    rng = np.random.default_rng(0)
    n = 300_000
    freq = {}
    for true in (0, 1):
        out = randomized_response(np.full(n, true), 3, math.log(3), rng)
        freq[true] = np.bincount(out, minlength=3) / n
    assert freq[0] == pytest.approx([0.6, 0.2, 0.2], abs=0.005)
    assert freq[1] == pytest.approx([0.2, 0.6, 0.2], abs=0.005)
    ratios = [freq[a][o] / freq[b][o] for a, b in ((0, 1), (1, 0)) for o in range(3)]
    assert max(ratios) == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError):
        randomized_response(np.array([3]), 3, 1.0, rng)


def _exact_gaussian_delta(eps: float, sigma: float, steps: int) -> float:
    """δ(ε) of ``steps`` Gaussian mechanisms with multiplier σ, sensitivity 1 (their composition is
    one Gaussian mechanism with multiplier σ / sqrt(steps)): Balle & Wang's exact formula."""
    s = sigma / math.sqrt(steps)
    return norm.cdf(-eps * s + 1 / (2 * s)) - math.exp(eps) * norm.cdf(-eps * s - 1 / (2 * s))


@pytest.mark.parametrize("epsilon", [8.0, 2.0])
def test_plan_splits_the_budget_and_its_gaussian_part_holds_by_the_exact_formula(epsilon):
    plan = plan_segments(epsilon=epsilon, delta=1e-5, segments=8, top_items=64, kmeans_iters=4, gaussian_share=0.25)
    assert plan.gaussian_steps == 5 and plan.clusters == 6
    assert plan.gaussian_epsilon <= 0.25 * epsilon + 1e-9
    assert plan.gaussian_epsilon + plan.rr_epsilon == pytest.approx(epsilon)
    # the accountant's ε for the Gaussian steps really holds at δ (independent exact computation)
    assert _exact_gaussian_delta(plan.gaussian_epsilon, plan.noise_multiplier, 5) <= 1e-5
    with pytest.raises(PrivacyError):
        plan_segments(epsilon=0.01, delta=1e-5, segments=8, top_items=64, kmeans_iters=100, gaussian_share=0.999)


def _split(user_items: list[list[int]], num_items: int, val: list[int] | None = None) -> SiloSplit:
    users = np.repeat(np.arange(len(user_items)), [len(x) for x in user_items]).astype(np.int64)
    items = np.array([i for x in user_items for i in x], dtype=np.int64)
    n = len(user_items)
    val_item = np.array(val if val is not None else [0] * n, dtype=np.int64)
    return SiloSplit(
        name="t", user_ids=np.array([f"u{i:03d}" for i in range(n)]), item_ids=np.array([f"i{j:03d}" for j in range(num_items)]),
        train_user=users, train_item=items, train_weight=np.ones(len(items), dtype=np.float32),
        train_row=np.arange(len(items)), val_item=val_item, val_row=np.zeros(n, dtype=np.int64),
        test_item=val_item.copy(), test_row=np.zeros(n, dtype=np.int64),
        seen_items=(users, items), cold=np.array([not x for x in user_items]),
    )


class RecordingRng:
    """Records the scale of every Gaussian draw (and returns zeros: the exact statistics)."""

    def __init__(self):
        self.normal_calls = []
        self.inner = np.random.default_rng(1)

    def normal(self, loc, scale, size):
        self.normal_calls.append((scale, size))
        return np.zeros(size)

    def random(self, size):
        return self.inner.random(size)

    def integers(self, low, high, size):
        return self.inner.integers(low, high, size)


def test_source_noise_is_the_planned_gaussian_noise_on_sensitivity_one_and_sqrt2_statistics():
    plan = plan_segments(epsilon=8.0, delta=1e-5, segments=5, top_items=3, kmeans_iters=2, gaussian_share=0.25)
    split = _split([[0, 1], [0], [1, 2], [2], [3]], num_items=4)
    rng = RecordingRng()
    shopper_segments(split, plan, rng)
    scales = [scale for scale, _ in rng.normal_calls]
    sigma = plan.noise_multiplier
    # the item histogram (each shopper a unit vector: sensitivity 1), then per Lloyd step the
    # clusters' sums and counts (one shopper moves both: sensitivity sqrt 2)
    assert scales[0] == pytest.approx(sigma)
    assert scales[1:] == pytest.approx([sigma * math.sqrt(2)] * (2 * plan.kmeans_iters))
    assert rng.normal_calls[0][1] == (4,)


def test_each_shopper_changes_one_table_value_and_collisions_ignore_data():
    # shoppers' (first row, second row): 0 -> (3, 1), 1 -> (3, 0), 2 -> (5, 2)
    rows = np.array([[3, 1], [3, 0], [5, 2]])
    values = table_values(np.array([1, 2, 0]), rows, table_size=8, none=7)
    assert values.tolist() == [7, 7, 7, 2, 7, 0, 7, 7]  # row 3: shopper 1 (smaller second row)
    # without shopper 1, only row 3 changes
    values_without = table_values(np.array([1, 0]), rows[[0, 2]], table_size=8, none=7)
    assert (values != values_without).sum() == 1


def test_release_covers_every_row_and_segments_follow_profiles():
    # two kinds of shoppers: item 0, and items {1, 2}; others with only item 3 (not a top item)
    user_items = [[0]] * 30 + [[1, 2]] * 30 + [[3]] * 2
    split = _split(user_items, num_items=4)
    plan = plan_segments(epsilon=8.0, delta=1e-5, segments=4, top_items=3, kmeans_iters=3, gaussian_share=0.25)
    assert plan.clusters == 2 and plan.gaussian_steps == 4
    exact = shopper_segments(split, plan, None)
    assert len(set(exact[:30])) == 1 and len(set(exact[30:60])) == 1 and exact[0] != exact[30]
    assert set(exact[:60]) == {0, 1}
    assert exact[60] == exact[61] == 2  # a member without a top item: "member" (K - 2)
    rows = np.stack([np.arange(62) * 2, np.arange(62)], axis=1)
    exact_table = release(split, rows, 200, plan, None)
    assert (exact_table[rows[:, 0]] == exact).all() and (np.delete(exact_table, rows[:, 0]) == 3).all()  # "none"
    out = release(split, rows, 200, plan, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == (200,) and out.max() < 4


def test_two_values_release_membership_alone_with_the_whole_budget():
    plan = plan_segments(epsilon=2.0, delta=1e-5, segments=2, top_items=64, kmeans_iters=4, gaussian_share=0.25)
    assert plan.gaussian_steps == 0 and plan.rr_epsilon == 2.0 and plan.gaussian_epsilon == 0.0
    split = _split([[0], [1, 2], [3]], num_items=4)
    rng = RecordingRng()
    rows = np.array([[0, 5], [2, 6], [4, 7]])
    exact = release(split, rows, 8, plan, None)
    assert exact.tolist() == [0, 1, 0, 1, 0, 1, 1, 1]  # members 0, "none" 1
    release(split, rows, 8, plan, rng)
    assert rng.normal_calls == []  # no Gaussian step: nothing but the randomized response


def test_target_features_check_the_release_shape():
    rows = np.array([[1, 0], [4, 2]])
    assert target_features({"A": np.array([0, 1, 2, 0, 2], dtype=np.uint8)}, rows, 3).tolist() == [[1], [2]]
    with pytest.raises(ValueError, match="rows"):
        target_features({"A": np.zeros(3, dtype=np.uint8)}, rows, 3)
    with pytest.raises(ValueError, match="one unsigned integer value"):
        target_features({"A": np.full(5, 3, dtype=np.uint8)}, rows, 3)
    for bad in (np.full(5, -1, dtype=np.int8), np.full(5, 0.7), np.ones(5, dtype=bool), np.array(["a"] * 5)):
        with pytest.raises(ValueError, match="one unsigned integer value"):
            target_features({"A": bad}, rows, 3)
    with pytest.raises(ValueError, match="shopper table has 5"):
        target_features({"A": np.zeros(6, dtype=np.uint8)}, rows, 3, table_size=5)


def test_segment_model_by_hand_and_weight_chosen_on_validation():
    # shoppers 0, 1 released value 0, shopper 2 value 1; 4 items
    split = _split([[0], [0, 1], [2], []], num_items=4, val=[1, 0, 3, 1])
    features = np.array([[0], [0], [1], [0]])
    negatives = EvalNegatives(val=np.array([[2, 3]] * 4), test=np.array([[2, 3]] * 4))
    model, scores = fit_segment_model(split, features, ("A",), 2, negatives)
    # popularity [2, 1, 1, 0] + 0.1 over 4.4; value 0 counts [2, 1, 0, 0] (+ p) over 3 + 1
    p0 = 2.1 / 4.4
    assert model.ratio[1, 0, 0, 0] == pytest.approx(((2 + p0) / 4) / p0)  # shoppers with history
    assert model.log_pop[3] == pytest.approx(math.log(0.1 / 4.4))
    weights = {round(0.1 * i, 1) for i in range(11)}
    for group, w in zip(("without history", "with history"), model.weights):
        assert set(scores[group]) == weights and scores[group][w] == max(scores[group].values())
    history = has_history(split)
    assert history.tolist() == [True, True, True, False]
    # the cold shopper (3, value 0) gets item 1 (liked by value 0) above item 2 (equally popular)
    scored = model.scorer(features, history, (0.5, 0.0)).score_all(np.array([3]))[0]
    assert scored[1] > scored[2]
    plain = model.scorer(features, history, (0.0, 0.5)).score_all(np.array([3]))[0]
    assert plain[1] == pytest.approx(plain[2])  # w = 0 for shoppers without history: popularity


def _segment_ledger(**kw) -> PrivacyLedger:
    return PrivacyLedger(silo=kw.get("silo", "A"), category=kw.get("category", "A"), epsilon_budget=8.0, delta=1e-5,
                         accountant="rdp", max_grad_norm=1.0, max_interactions_per_shopper=20, noise_multiplier=2.0,
                         sample_rate=1.0, planned_steps=5, noise_seed="secret")


def test_ledger_adds_pure_epsilon_to_the_accountant_and_refuses_beyond_budget():
    ledger = _segment_ledger()
    ledger.record(phase="release", round_number=1, steps=5, noise_multiplier=2.0, sample_rate=1.0)
    gaussian = epsilon_of([(2.0, 1.0, 5)], 1e-5)
    entry = ledger.record_pure(phase="release", round_number=2, pure_epsilon=3.0, values=100, choices=8)
    assert entry["epsilon"] == pytest.approx(gaussian + 3.0)
    assert ledger.spent == pytest.approx(gaussian + 3.0) and ledger.steps == 5 and ledger.pure_epsilon == 3.0
    again = PrivacyLedger.from_dict(ledger.as_dict()).recomputed()
    assert [e["epsilon"] for e in again.entries] == pytest.approx([gaussian, gaussian + 3.0])
    with pytest.raises(PrivacyError):
        ledger.check_release(phase="release", round_number=3, gaussian=[], pure=8.0)
    assert ledger.refusals and ledger.refusals[-1]["projected_epsilon"] == pytest.approx(gaussian + 11.0)
    # two such silos for one shopper in both: Gaussian parts composed by RDP, pure parts added
    other = _segment_ledger(silo="B", category="B")
    other.record(phase="release", round_number=1, steps=5, noise_multiplier=2.0, sample_rate=1.0)
    other.record_pure(phase="release", round_number=2, pure_epsilon=1.0, values=100, choices=8)
    fed = federation_figure([ledger, other], 1e-5)
    assert fed["all_silos"]["epsilon"] == pytest.approx(epsilon_of([(2.0, 1.0, 10)], 1e-5) + 4.0, rel=1e-9)


@pytest.mark.parametrize("change, message", [
    ({"pure_epsilon": -1.0}, "pure_epsilon"),
    ({"pure_epsilon": "3"}, "pure_epsilon"),
    ({"mechanism": "laplace"}, "mechanism"),
    ({"values": 0}, "values"),
])
def test_ledger_rejects_bad_randomized_response_entries(change, message):
    ledger = _segment_ledger()
    ledger.record_pure(phase="release", round_number=2, pure_epsilon=3.0, values=100, choices=8)
    data = ledger.as_dict()
    data["entries"][0].update(change)
    with pytest.raises(ValueError, match=message):
        PrivacyLedger.from_dict(data)


def test_the_channel_is_inverted_by_hand():
    from crossrec_core.segments import _posterior, _true_shares, channel

    m = channel(2, math.log(3))  # keep 3/4
    assert m.tolist() == [[0.75, 0.25], [0.25, 0.75]]
    assert channel(3, None).tolist() == np.eye(3).tolist()
    # true shares (0.2, 0.8) are released as (0.75 * 0.2 + 0.25 * 0.8, ...) = (0.35, 0.65)
    values = np.array([0] * 35 + [1] * 65)
    assert _true_shares(m, values, 2) == pytest.approx([0.2, 0.8])
    # P(true | released 0) = (0.75 * 0.2, 0.25 * 0.8) / 0.35
    assert _posterior(m, np.array([0.2, 0.8]))[0] == pytest.approx([0.15 / 0.35, 0.2 / 0.35])


def test_a_saved_segment_model_is_checked_on_load(tmp_path):
    from crossrec_core.segments import SegmentModel

    good = SegmentModel(np.log(np.full(4, 0.25)), np.ones((2, 1, 2, 4)), (0.5, 0.2), ("A",))
    good.save(tmp_path / "m.npz")
    loaded = SegmentModel.load(tmp_path / "m.npz", segments=2, items=4)
    assert loaded.weights == (0.5, 0.2) and loaded.sources == ("A",)
    with pytest.raises(ValueError, match="ratio"):
        SegmentModel.load(tmp_path / "m.npz", segments=3, items=4)
    with pytest.raises(ValueError, match="log_pop"):
        SegmentModel.load(tmp_path / "m.npz", segments=2, items=5)
    for bad in (SegmentModel(good.log_pop, good.ratio, (float("nan"), 0.2), ("A",)),
                SegmentModel(good.log_pop, good.ratio, (5.0, 0.2), ("A",)),
                SegmentModel(good.log_pop, -good.ratio, (0.5, 0.2), ("A",)),
                SegmentModel(good.log_pop, np.ones((2, 2, 2, 4)), (0.5, 0.2), ("A", "A"))):
        bad.save(tmp_path / "bad.npz")
        with pytest.raises(ValueError):
            SegmentModel.load(tmp_path / "bad.npz", segments=2, items=4)


def test_a_release_without_information_gives_no_lift():
    # ε so small that the randomized response keeps and swaps values alike: the target ignores it
    split = _split([[0], [0, 1], [2], []], num_items=4, val=[1, 0, 3, 1])
    features = np.array([[0], [0], [1], [0]])
    negatives = EvalNegatives(val=np.array([[2, 3]] * 4), test=np.array([[2, 3]] * 4))
    model, _ = fit_segment_model(split, features, ("A",), 2, negatives, {"A": 1e-17})
    assert np.all(model.ratio == 1.0)


def test_a_plan_the_gaussian_steps_cannot_meet_names_the_segment_settings():
    with pytest.raises(PrivacyError, match="segment-gaussian-share"):
        plan_segments(epsilon=0.05, delta=1e-5, segments=4, top_items=64, kmeans_iters=4, gaussian_share=0.25)
    plan = plan_segments(epsilon=0.05, delta=1e-5, segments=2, top_items=64, kmeans_iters=4, gaussian_share=0.25)
    assert plan.rr_epsilon == 0.05  # membership alone: any ε > 0 can be planned


def test_a_report_of_releases_must_say_it_is_a_segment_run(tmp_path):
    import json

    from crossrec_core.errors import CrossrecError
    from crossrec_core.privacy_report import read_report, rerender, write_ledger_report

    ledger = _segment_ledger()
    ledger.record_pure(phase="release", round_number=1, pure_epsilon=8.0, values=100, choices=2)
    report = write_ledger_report(tmp_path, [ledger], dp=True, delta=1e-5, accountant="rdp", design="segments")
    assert report["summary"][0]["epsilon_spent"] == pytest.approx(8.0)
    assert any("Membership is protected by ε" in n for n in report["notes"])
    assert rerender(tmp_path)["design"] == "segments"
    data = json.loads((tmp_path / "privacy_report.json").read_text())
    for change in ({"design": "dp-sgd"}, {"silos": data["silos"] * 2}):
        (tmp_path / "privacy_report.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(CrossrecError):
            read_report(tmp_path)
