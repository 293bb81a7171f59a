"""Accounting checks against values computed independently of Opacus and of crossrec."""

import math

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp

from crossrec_core.errors import PrivacyError
from crossrec_core.privacy import PrivacyLedger, epsilon_of, federation_figure
from crossrec_core.privacy_report import (
    REPORT_JSON,
    REPORT_MD,
    REPORT_PNG,
    build_report,
    main as report_main,
    write_report,
)
from crossrec_core.training import calibrate_noise

ORDERS = [1.5, 2, 3, 4, 8, 16, 32]


def phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """Exact ε of a Gaussian mechanism with sensitivity/σ = mu at δ (Balle & Wang 2018, Thm. 8):
    δ(ε) = Φ(μ/2 - ε/μ) - e^ε Φ(-μ/2 - ε/μ), solved for ε by bisection."""
    def delta_of(eps):
        return phi(mu / 2 - eps / mu) - math.exp(eps) * phi(-mu / 2 - eps / mu)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


def test_rdp_of_the_unsubsampled_gaussian_is_its_closed_form():
    # without subsampling, T steps of the Gaussian mechanism have RDP T * α / (2 σ²) at order α
    sigma, steps = 1.7, 12
    expected = [steps * a / (2 * sigma**2) for a in ORDERS]
    np.testing.assert_allclose(compute_rdp(q=1.0, noise_multiplier=sigma, steps=steps, orders=ORDERS), expected, rtol=1e-9)


def test_rdp_of_the_subsampled_gaussian_at_order_two_matches_the_binomial_expansion():
    # Poisson subsampling at rate q, integer order 2 (Mironov, Talwar, Zhang 2019):
    # RDP(2) = log((1-q)^2 + 2q(1-q) + q^2 exp(1/σ²)) = log(1 + q²(e^{1/σ²} - 1))
    for q, sigma in [(0.01, 0.8), (0.1, 1.5), (0.5, 3.0)]:
        expected = math.log1p(q**2 * math.expm1(1 / sigma**2))
        assert compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=[2])[0] == pytest.approx(expected, rel=1e-9)
        # order 3: sum_k C(3,k) (1-q)^{3-k} q^k exp((k²-k)/(2σ²)), divided by (α - 1) = 2
        a3 = sum(math.comb(3, k) * (1 - q) ** (3 - k) * q**k * math.exp((k * k - k) / (2 * sigma**2)) for k in range(4))
        assert compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=[3])[0] == pytest.approx(math.log(a3) / 2, rel=1e-9)


@pytest.mark.parametrize("sigma,steps", [(2.0, 1), (4.0, 9), (8.0, 50)])
def test_accountants_bound_the_exact_epsilon_of_the_gaussian_mechanism(sigma, steps):
    # T un-subsampled Gaussian steps = one Gaussian mechanism with μ = sqrt(T) / σ
    delta = 1e-5
    exact = gaussian_exact_epsilon(math.sqrt(steps) / sigma, delta)
    rdp = epsilon_of([(sigma, 1.0, steps)], delta, "rdp")
    prv = epsilon_of([(sigma, 1.0, steps)], delta, "prv")
    assert exact <= rdp <= exact * 1.35 + 0.05  # RDP is a valid but looser bound
    assert exact - 1e-3 <= prv <= exact + 0.02  # PRV is numerically tight (ε error 0.01)


def test_composition_across_rounds_equals_one_accountant_over_all_steps():
    ledger = PrivacyLedger(silo="A", category="A", epsilon_budget=100.0, delta=1e-5, accountant="rdp",
                           max_grad_norm=1.0, max_interactions_per_shopper=20, noise_multiplier=0.9,
                           sample_rate=0.02, planned_steps=300)
    for r in (1, 2, 3):
        ledger.record(phase="pretrain", round_number=r, steps=100, noise_multiplier=0.9, sample_rate=0.02)
    one_run = epsilon_of([(0.9, 0.02, 300)], 1e-5, "rdp")
    assert ledger.spent == pytest.approx(one_run, rel=1e-12)
    # and the RDP curve adds up step by step (independent of the accountant's bookkeeping)
    one_step = compute_rdp(q=0.02, noise_multiplier=0.9, steps=1, orders=ORDERS)
    np.testing.assert_allclose(compute_rdp(q=0.02, noise_multiplier=0.9, steps=300, orders=ORDERS), 300 * one_step, rtol=1e-9)
    eps = [e["epsilon"] for e in ledger.entries]
    assert eps[0] < eps[1] < eps[2]
    assert ledger.epsilon(extra_steps=100) == pytest.approx(epsilon_of([(0.9, 0.02, 400)], 1e-5), rel=1e-12)


def test_calibrated_noise_meets_the_budget_for_both_accountants():
    for accountant in ("rdp", "prv"):
        sigma = calibrate_noise(epsilon=2.0, delta=1e-5, sample_rate=0.05, steps=100, accountant=accountant)
        eps = epsilon_of([(sigma, 0.05, 100)], 1e-5, accountant)
        assert 2.0 - 0.01 <= eps <= 2.0
    with pytest.raises(PrivacyError, match="too small"):
        calibrate_noise(epsilon=1e-4, delta=1e-12, sample_rate=1.0, steps=100000)


def _ledger(silo, category, sigma=1.0, q=0.05, steps=50, budget=8.0):
    ledger = PrivacyLedger(silo=silo, category=category, epsilon_budget=budget, delta=1e-5, accountant="rdp",
                           max_grad_norm=1.0, max_interactions_per_shopper=20, noise_multiplier=sigma,
                           sample_rate=q, planned_steps=steps)
    ledger.record(phase="pretrain", round_number=1, steps=steps, noise_multiplier=sigma, sample_rate=q)
    return ledger


def test_federation_figure_composes_the_silos_a_shopper_is_in():
    a, b, c = _ledger("A", "A"), _ledger("B", "B", sigma=1.3), _ledger("C", "C", sigma=2.0)
    fed = federation_figure([a, b, c], 1e-5)
    # a shopper in all three silos: one accountant over all their steps
    all3 = epsilon_of([(1.0, 0.05, 50), (1.3, 0.05, 50), (2.0, 0.05, 50)], 1e-5)
    assert fed["all_silos"]["epsilon"] == pytest.approx(all3, rel=1e-12)
    # in one silo: the worst single silo (A, least noise); in two: A and B
    assert fed["by_silo_count"]["1"]["epsilon"] == pytest.approx(a.spent) and fed["by_silo_count"]["1"]["worst_silos"] == ["A"]
    assert fed["by_silo_count"]["2"]["worst_silos"] == ["A", "B"]
    values = [fed["by_silo_count"][k]["epsilon"] for k in ("1", "2", "3")]
    assert values == sorted(values) and values[0] < values[2] < sum(x.spent for x in (a, b, c))


def test_merchants_of_one_category_are_not_composed_together():
    m1, m2, other = _ledger("Toys-1", "Toys"), _ledger("Toys-2", "Toys", sigma=0.8), _ledger("Beauty", "Beauty")
    fed = federation_figure([m1, m2, other], 1e-5)
    assert set(fed["by_silo_count"]) == {"1", "2"}
    assert fed["all_silos"]["worst_silos"] == ["Beauty", "Toys-2"]
    assert fed["all_silos"]["epsilon"] == pytest.approx(epsilon_of(m2.history + other.history, 1e-5), rel=1e-12)


def test_the_rdp_upper_bound_is_above_the_exact_worst_case(monkeypatch):
    ledgers = [_ledger(f"S{i}", f"S{i}", sigma=0.8 + 0.2 * i) for i in range(4)]
    exact = federation_figure(ledgers, 1e-5)
    monkeypatch.setattr("crossrec_core.privacy.MAX_COMBINATIONS", 1)
    bound = federation_figure(ledgers, 1e-5)
    for k in ("2", "3"):
        assert bound["by_silo_count"][k]["method"] == "rdp upper bound"
        assert bound["by_silo_count"][k]["epsilon"] >= exact["by_silo_count"][k]["epsilon"] - 1e-9


def test_ledger_json_round_trip_and_report_files(tmp_path, capsys):
    a, b = _ledger("A", "A"), _ledger("B", "B", sigma=1.3)
    with pytest.raises(PrivacyError):
        b.check(10_000, phase="pretrain", round_number=2)
    assert PrivacyLedger.from_dict(a.as_dict()) == a
    report = write_report(tmp_path, build_report([a, b], dp=True, delta=1e-5, accountant="rdp"))
    assert report["budgets_respected"] and report["refusals"][0]["silo"] == "B"
    assert (tmp_path / REPORT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / REPORT_MD).read_text()
    assert "| A | shopper | 20 |" in md and "a shopper in every silo" in md and "What the server sees" in md
    # re-rendering recomputes ε from the steps: a tampered figure in the JSON does not survive
    import json

    data = json.loads((tmp_path / REPORT_JSON).read_text())
    data["silos"][0]["entries"][0]["epsilon"] = 0.001
    (tmp_path / REPORT_JSON).write_text(json.dumps(data))
    assert report_main([str(tmp_path)]) == 0
    again = json.loads((tmp_path / REPORT_JSON).read_text())
    assert again["silos"][0]["entries"][0]["epsilon"] == pytest.approx(a.spent)
    assert report_main([str(tmp_path / "missing")]) == 2
    assert "no privacy_report.json" in capsys.readouterr().err


def test_a_run_without_dp_says_so(tmp_path):
    write_report(tmp_path, build_report([], dp=False, delta=1e-5, accountant="rdp"))
    assert "no differential-privacy guarantee" in (tmp_path / REPORT_MD).read_text()
    assert (tmp_path / REPORT_PNG).exists()


def test_recomputed_epsilon_per_entry_equals_one_accountant_over_each_prefix():
    ledger = _ledger("A", "A")
    for r in range(2, 5):
        ledger.record(phase="pretrain", round_number=r, steps=7 * r, noise_multiplier=0.9 + 0.1 * r, sample_rate=0.02)
    again = ledger.recomputed()
    for i, entry in enumerate(again.entries):
        assert entry["epsilon"] == pytest.approx(epsilon_of(ledger.history[: i + 1], 1e-5, "rdp"), rel=1e-9)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(dp="false"), "dp must be true or false"),
    (lambda d: d.update(delta=2.0), "delta must be"),
    (lambda d: d.update(accountant="foo"), "accountant must be"),
    (lambda d: d.update(notes="hello"), "notes must be a list"),
    (lambda d: d["silos"][0].update(delta=float("nan")), "delta must be"),
    (lambda d: d["silos"][0].update(epsilon_budget=-1), "epsilon_budget must be"),
    (lambda d: d["silos"][0].update(epsilon_budget="8"), "epsilon_budget must be"),
    (lambda d: d["silos"][0]["entries"][0].update(steps=-100), "steps must be"),
    (lambda d: d["silos"][0]["entries"][0].update(noise_multiplier=float("inf")), "noise_multiplier must be"),
    (lambda d: d["silos"][0]["entries"][0].update(sample_rate=2.0), "sample_rate must be"),
    (lambda d: d["silos"][0]["entries"][0].update(round="x"), "round must be"),
    (lambda d: d["silos"][0]["refusals"].append({}), "refusals[0] lacks"),
])
def test_a_tampered_report_is_refused_and_its_files_are_left_alone(tmp_path, capsys, change, message):
    import json

    write_report(tmp_path, build_report([_ledger("A", "A")], dp=True, delta=1e-5, accountant="rdp"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    data = json.loads((tmp_path / REPORT_JSON).read_text())
    change(data)
    text = json.dumps(data)  # NaN / Infinity are written as JSON's non-standard literals, as a tamperer could
    (tmp_path / REPORT_JSON).write_text(text)
    assert report_main([str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / REPORT_JSON).read_text() == text
    assert (tmp_path / REPORT_MD).read_bytes() == before[REPORT_MD]
    assert (tmp_path / REPORT_PNG).read_bytes() == before[REPORT_PNG]
