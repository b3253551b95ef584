"""The preference losses (DPO and its variants, ORPO, SimPO, KTO) against hand computations from their
papers' formulas, and each method's bad settings reported with every other config problem."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import compose
from llama2ft.config.validation import collect_problems
from llama2ft.data.templates import IGNORE_INDEX
from llama2ft.training.methods import method_problems
from llama2ft.training.methods.dpo import dpo_loss
from llama2ft.training.methods.kto import batch_kl, kto_loss
from llama2ft.training.methods.orpo import orpo_loss
from llama2ft.training.methods.simpo import simpo_loss
from llama2ft.training.start import start_problems
from llama2ft.training.preference import sequence_logps


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- losses by hand
def test_sequence_logps_sums_only_labelled_next_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [1 / 3] * 3]]))
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2]])  # position 1 predicts token 1, position 2 token 2
    logp, n = sequence_logps(logits, labels)
    assert n.tolist() == [2]
    assert logp.item() == pytest.approx(math.log(0.6) + math.log(0.6), abs=1e-6)


def test_dpo_losses_match_hand_computation():
    c, r, rc, rr, beta = t(-3.0, -5.0), t(-4.0, -2.0), t(-3.5, -4.0), t(-3.5, -3.0), 0.5
    h = [(-3.0 + 3.5) - (-4.0 + 3.5), (-5.0 + 4.0) - (-2.0 + 3.0)]  # [1.0, -2.0]
    loss, rewards = dpo_loss(c, r, rc, rr, beta, "sigmoid")
    assert loss.tolist() == pytest.approx([-math.log(sig(beta * x)) for x in h])
    assert rewards["chosen"].tolist() == pytest.approx([0.25, -0.5])
    assert rewards["rejected"].tolist() == pytest.approx([-0.25, 0.5])
    loss, _ = dpo_loss(c, r, rc, rr, beta, "sigmoid", label_smoothing=0.1)
    assert loss.tolist() == pytest.approx([-0.9 * math.log(sig(beta * x)) - 0.1 * math.log(sig(-beta * x)) for x in h])
    loss, _ = dpo_loss(c, r, rc, rr, beta, "hinge")
    assert loss.tolist() == pytest.approx([max(0.0, 1 - beta * x) for x in h])
    n_c, n_r = t(2, 4), t(4, 1)
    loss, _ = dpo_loss(c, r, rc, rr, beta, "sigmoid", chosen_len=n_c, sft_weight=0.5)  # + 0.5 x chosen's token NLL
    assert loss.tolist() == pytest.approx([-math.log(sig(beta * x)) + 0.5 * nll for x, nll in zip(h, [1.5, 1.25])])
    # ipo compares per-token averages
    loss, _ = dpo_loss(c, r, rc, rr, beta, "ipo", chosen_len=n_c, rejected_len=n_r)
    h_avg = [(-3.0 + 3.5) / 2 - (-4.0 + 3.5) / 4, (-5.0 + 4.0) / 4 - (-2.0 + 3.0) / 1]
    assert loss.tolist() == pytest.approx([(x - 1 / (2 * beta)) ** 2 for x in h_avg])


def test_orpo_loss_matches_hand_computation():
    c, r, n_c, n_r, beta = t(-2.0), t(-6.0), t(4), t(3), 0.2
    avg_c, avg_r = -0.5, -2.0
    odds = lambda a: math.exp(a) / (1 - math.exp(a))  # noqa: E731
    log_or = math.log(odds(avg_c) / odds(avg_r))
    loss, r_ = orpo_loss(c, r, n_c, n_r, beta)
    assert loss.item() == pytest.approx(0.5 - beta * math.log(1 / (1 + math.exp(-log_or))))
    assert r_["chosen"].item() == pytest.approx(beta * avg_c) and r_["log_odds_ratio"].item() == pytest.approx(log_or)


def test_simpo_loss_matches_hand_computation():
    c, r, n_c, n_r, beta, gamma = t(-2.0, -3.0), t(-6.0, -1.0), t(4, 3), t(3, 2), 2.0, 1.0
    avg_c, avg_r = [-0.5, -1.0], [-2.0, -0.5]
    loss, rewards = simpo_loss(c, r, n_c, n_r, beta, gamma)
    assert loss.tolist() == pytest.approx([-math.log(sig(beta * (a - b) - gamma)) for a, b in zip(avg_c, avg_r)])
    assert rewards["chosen"].tolist() == pytest.approx([beta * a for a in avg_c])
    assert rewards["rejected"].tolist() == pytest.approx([beta * b for b in avg_r])
    # no reference: the loss depends on the answers' per-token averages only (a longer, equally likely answer
    # gives the same loss)
    twice, _ = simpo_loss(2 * c, 2 * r, 2 * n_c, 2 * n_r, beta, gamma)
    assert twice.tolist() == pytest.approx(loss.tolist())
    with_sft, _ = simpo_loss(c, r, n_c, n_r, beta, gamma, sft_weight=0.5)
    assert with_sft.tolist() == pytest.approx([x - 0.5 * a for x, a in zip(loss.tolist(), avg_c)])


def test_kto_loss_matches_hand_computation():
    logps, refs = t(-3.0, -5.0, -2.0), t(-4.0, -4.0, -2.5)  # log-ratios 1.0, -1.0, 0.5
    desirable = torch.tensor([True, False, False])
    beta, w_d, w_u = 0.5, 1.0, 2.0
    kl = batch_kl(t(-4.0, -6.0), t(-4.5, -6.1))  # mean of 0.5 and 0.1
    assert kl.item() == pytest.approx(0.3)
    loss, rewards = kto_loss(logps, refs, desirable, kl, beta, w_d, w_u)
    z0 = 0.3
    want = [w_d * (1 - sig(beta * (1.0 - z0))), w_u * (1 - sig(beta * (z0 + 1.0))), w_u * (1 - sig(beta * (z0 - 0.5)))]
    assert loss.tolist() == pytest.approx(want)
    assert rewards.tolist() == pytest.approx([0.5, -0.5, 0.25])
    # the reference point is clamped at 0: a policy that drifted below the reference on unrelated answers
    # does not lower the bar
    loss0, _ = kto_loss(logps, refs, desirable, t(-2.0), beta, w_d, w_u)
    assert loss0.tolist() == pytest.approx(kto_loss(logps, refs, desirable, t(0.0), beta, w_d, w_u)[0].tolist())
    # sft_weight: plus the desirable completions' mean token NLL (undesirable ones untouched)
    with_sft, _ = kto_loss(logps, refs, desirable, kl, beta, w_d, w_u, lengths=t(2, 5, 4), sft_weight=0.5)
    assert with_sft.tolist() == pytest.approx([want[0] + 0.5 * 3.0 / 2, want[1], want[2]])


@pytest.mark.parametrize("method, bad, needles", [
    ("dpo", ["method.beta=0", "method.loss_type=kto", "method.label_smoothing=0.7"],
     ["method.beta=0", "method.loss_type='kto'", "method.label_smoothing=0.7"]),
    ("simpo", ["method.beta=-1", "method.gamma=-0.5"], ["method.beta=-1", "method.gamma=-0.5"]),
    ("kto", ["method.desirable_weight=0", "method.undesirable_weight=-1"],
     ["method.desirable_weight=0", "method.undesirable_weight=-1"]),
    ("orpo", ["method.beta=0"], ["method.beta=0"]),
])
def test_method_config_problems_all_at_once(method, bad, needles):
    cfg = compose([f"method={method}", *bad, "data.packing=true", "init_from=/no/such/run", "trainer.learning_rate=0"])
    problems = collect_problems(cfg) + method_problems(cfg) + start_problems(cfg)
    for needle in (*needles, "data.packing=true", "init_from='/no/such/run'", "trainer.learning_rate=0"):
        assert any(needle in p for p in problems), (needle, problems)
    ok = compose([f"method={method}"])
    assert collect_problems(ok) + method_problems(ok) == []
    assert ok.data.train_file.endswith("data/pairs/train.csv")  # alone it trains on the shipped pairs


def test_method_names_and_settings_come_from_the_registry():
    assert any("method.name='rlhf'" in p for p in method_problems(compose(["method.name=rlhf"])))
    # renaming the method without its group would leave another method's settings: refused
    assert any("method=kto" in p for p in method_problems(compose(["method.name=kto"])))
    assert any("init_from" in p for p in method_problems(compose(["init_from=/tmp"])))  # not for sft
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["method.beta=0.5"])  # SFT has no beta: a typo-level mistake fails when Hydra composes
