import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from crossrec_core.data import load_silo
from crossrec_core.errors import PrivacyError
from crossrec_core.evaluation import ModelScorer
from crossrec_core.keying import hash_ids
from crossrec_core.model import CrossRecModel
from crossrec_core.splits import leave_one_out
from crossrec_core.training import (
    DPSettings,
    ShopperData,
    ShopperLoss,
    TrainSettings,
    calibrate_noise,
    make_accountant,
    steps_per_epoch,
    train,
)
from tests.conftest import write_planted

TABLE = 4096


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = write_planted(tmp_path_factory.mktemp("planted") / "Planted.csv", shoppers=300, items_per_group=60)
    split = leave_one_out(load_silo(path))
    user_rows = hash_ids(split.user_ids, key="k", table_size=TABLE, namespace="shopper")
    item_rows = hash_ids(split.item_ids, key="k", table_size=TABLE, namespace="item")
    data = ShopperData(split, user_rows=user_rows, catalogue_rows=item_rows, max_interactions=10)
    return split, data, user_rows, item_rows


def group_hit_rate(model, planted) -> float:
    """HR@10 of held-out items ranked against 50 items of the *other* group: chance is 10/51."""
    split, _, user_rows, item_rows = planted
    items = list(split.item_ids)
    other = {g: [items.index(f"item{i}") for i in range(g * 60, g * 60 + 50)] for g in (0, 1)}
    users = np.arange(split.num_users)
    group = np.array([int(u[len("shopper"):]) % 2 for u in split.user_ids])
    cand = np.stack([np.concatenate([[split.test_item[u]], other[1 - group[u]]]) for u in users])
    scores = ModelScorer(model, "Planted", user_rows, item_rows).score(users, cand)
    greater = (scores[:, 1:] > scores[:, :1]).sum(1)
    return float((greater < 10).mean())


def test_loss_per_shopper_matches_hand_computation():
    scores = torch.tensor([[[2.0, 1.0], [0.0, 3.0]]])  # one shopper, two interactions, one negative each
    weight = torch.tensor([[1.0, 0.0]])  # the second is padding
    out = ShopperLoss("bpr", l2=0.5, reduction="none")((scores, torch.tensor([4.0]), torch.ones(1, 2, 2)), weight)
    expected = np.log1p(np.exp(-1.0)) + 0.5 * (4.0 + 2.0)  # padding adds neither loss nor L2
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_model_learns_a_planted_preference(planted):
    _, data, _, _ = planted
    model = CrossRecModel(shopper_rows=TABLE, item_rows=TABLE, dim=8, silos=["Planted"], seed=0)
    before = group_hit_rate(model, planted)
    train(model, data, settings=TrainSettings(batch_size=32, learning_rate=0.02, l2=1e-4), epochs=15, seed=0, progress=False)
    after = group_hit_rate(model, planted)
    assert before < 0.5
    assert after > 0.9


def test_dp_training_spends_the_calibrated_budget_and_its_state_round_trips(planted):
    _, data, _, _ = planted
    settings = TrainSettings(batch_size=30, learning_rate=0.02, l2=1e-4)
    per_epoch = steps_per_epoch(len(data), settings.batch_size)
    q = 1.0 / per_epoch
    sigma = calibrate_noise(epsilon=3.0, delta=1e-5, sample_rate=q, steps=4 * per_epoch)
    dp = DPSettings(noise_multiplier=sigma, max_grad_norm=1.0, delta=1e-5)
    model = CrossRecModel(shopper_rows=TABLE, item_rows=TABLE, dim=8, silos=["Planted"], seed=0)

    first = train(model, data, settings=settings, epochs=2, seed=0, dp=dp, progress=False)
    second = train(model, data, settings=settings, epochs=2, seed=1, dp=dp, accountant_state_in=first.accountant_state, progress=False)

    assert first.steps == second.steps == 2 * per_epoch
    assert first.epsilon < second.epsilon <= 3.0
    assert second.epsilon == pytest.approx(3.0, abs=0.05)
    # an independent accountant over all the steps taken gives the same ε
    fresh = RDPAccountant()
    fresh.history = [(sigma, q, 4 * per_epoch)]
    assert second.epsilon == pytest.approx(fresh.get_epsilon(delta=1e-5), rel=1e-9)
    restored = make_accountant("rdp", second.accountant_state)
    assert restored.get_epsilon(delta=1e-5) == pytest.approx(second.epsilon, rel=1e-12)


def test_the_dp_code_path_learns_when_only_clipping_is_on(planted):
    """Noise multiplier 0 isolates clipping, sampling and Opacus' ghost-clipping path from the noise."""
    _, data, _, _ = planted
    settings = TrainSettings(batch_size=30, learning_rate=0.02, l2=1e-4)
    model = CrossRecModel(shopper_rows=TABLE, item_rows=TABLE, dim=8, silos=["Planted"], seed=0)
    report = train(model, data, settings=settings, epochs=15, seed=0, dp=DPSettings(0.0, 1.0, 1e-5), progress=False)
    assert report.steps == 15 * steps_per_epoch(len(data), 30)
    assert group_hit_rate(model, planted) > 0.9


def test_an_impossible_budget_fails_before_training():
    with pytest.raises(PrivacyError, match="cannot meet"):
        calibrate_noise(epsilon=1e-6, delta=1e-12, sample_rate=1.0, steps=100000)


def test_adam_beta1_reaches_the_optimizer_and_dp_has_its_own():
    from crossrec_core.config import load_config
    from crossrec_core.silo import train_settings
    from crossrec_core.training import _optimizer

    config = load_config({"adam-beta1": 0.0, "dp-adam-beta1": 0.8})
    assert train_settings(config).adam_beta1 == 0.0 and train_settings(config, dp=True).adam_beta1 == 0.8
    model = torch.nn.Sequential(torch.nn.Embedding(4, 2, sparse=True), torch.nn.Linear(2, 1))
    opt = _optimizer(model, 0.01, 0.3)
    assert [g["betas"][0] for part in opt.parts for g in part.param_groups] == [0.3, 0.3]


def test_embedding_norms_match_per_sample_autograd_and_opacus():
    from opacus.grad_sample.embedding_norm_sample import compute_embedding_norm_sample as opacus_norms

    from crossrec_core.training import embedding_norm_sample

    gen = torch.Generator().manual_seed(3)
    layer = torch.nn.Embedding(7, 3)
    ids = torch.tensor([[[0, 1], [1, 1]], [[6, 6], [6, 6]], [[2, 3], [4, 5]]])  # repeats within a sample
    backprops = torch.randn(*ids.shape, 3, generator=gen)
    expected = []
    for b in range(len(ids)):  # independent: each sample's own gradient of <backprops_b, layer(ids_b)>
        layer.zero_grad()
        (layer(ids[b]) * backprops[b]).sum().backward()
        expected.append(float(layer.weight.grad.norm()))
    norms = embedding_norm_sample(layer, [ids], backprops)[layer.weight]
    assert norms.tolist() == pytest.approx(expected, rel=1e-5)
    assert norms.tolist() == pytest.approx(opacus_norms(layer, [ids], backprops)[layer.weight].tolist(), rel=1e-5)
