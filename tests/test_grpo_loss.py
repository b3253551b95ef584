"""GRPO's definitions against TRL's: the clipped policy loss (grpo, dr_grpo, dapo; with and without the KL
term) equals `trl.GRPOTrainer._compute_loss` on the same model and inputs, its gradients too; the
advantages are TRL's group normalisation; the rewards' call is TRL's reward-function signature."""
from __future__ import annotations

import pytest
import torch

from llama2ft.training.grpo_trainer import completion_logps
from llama2ft.training.methods.grpo import advantages, grpo_loss, rows_with_signal
from llama2ft.training.rollouts import Rollout

pytest.importorskip("trl", reason="TRL is the reference definition (the dev extra installs it)")


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """A TRL GRPOTrainer on a small random Llama (saved, so that TRL can load its reference model)."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama2ft import PROJECT_ROOT
    from llama2ft.model.loading import open_tokenizer
    from trl import GRPOConfig, GRPOTrainer

    folder = tmp_path_factory.mktemp("trl") / "model"
    tok = open_tokenizer(str(PROJECT_ROOT / "data" / "tokenizer"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    args = GRPOConfig(output_dir=str(folder.parent / "out"), use_cpu=True, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=6, report_to="none", beta=0.1, epsilon=0.2,
                      epsilon_high=0.28, temperature=0.7, bf16=False)  # TRL defaults to bf16 autocast
    trainer = GRPOTrainer(model=str(folder), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                          args=args, train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}), processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1  # set by TRL's training loop; one micro-batch here
    trainer.model.train()
    return trainer


def inputs_for_both() -> tuple[dict, Rollout]:
    g = torch.Generator().manual_seed(1)
    n, p, c = 4, 3, 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    trl = {"prompt_ids": torch.randint(3, 200, (n, p), generator=g), "prompt_mask": torch.ones(n, p, dtype=torch.long),
           "completion_ids": torch.randint(3, 200, (n, c), generator=g), "completion_mask": mask,
           "advantages": torch.tensor([1.0, -0.5, 0.3, -1.2]),
           # log-probs of the answers when sampled (and the reference's): near the model's, so ratios straddle the clip
           "old_per_token_logps": None, "ref_per_token_logps": None, "num_items_in_batch": mask.sum().float()}
    roll = Rollout(trl["prompt_ids"], trl["prompt_mask"], trl["completion_ids"], mask, [""] * n,
                   torch.zeros(n, dtype=torch.bool), 0.0)
    return trl, roll


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_the_loss_and_its_gradients_equal_trl(trl_trainer, loss_type, beta):
    trainer = trl_trainer
    trainer.loss_type, trainer.beta = loss_type, beta
    model = trainer.model
    trl_inputs, roll = inputs_for_both()
    with torch.no_grad():
        now = completion_logps(model, roll, 0.7)
    g = torch.Generator().manual_seed(2)
    old = now + 0.3 * torch.randn(now.shape, generator=g)  # some ratios outside [0.8, 1.28]: the clip bites
    ref = now + 0.2 * torch.randn(now.shape, generator=g)
    trl_inputs.update(old_per_token_logps=old, ref_per_token_logps=ref)

    model.zero_grad()
    theirs = trainer._compute_loss(model, trl_inputs)
    theirs.backward()
    their_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    logps = completion_logps(model, roll, 0.7)
    ours, figures = grpo_loss(logps, old, trl_inputs["advantages"], roll.completion_mask, loss_type, 0.2, 0.28, beta,
                              ref if beta else None, max_new_tokens=6, tokens=trl_inputs["num_items_in_batch"])
    ours.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    for mine, theirs_g in zip((p.grad for p in model.parameters()), their_grads):
        torch.testing.assert_close(mine, theirs_g, rtol=1e-4, atol=1e-7)
    assert 0 < figures["clip_ratio"] < 1  # the inputs really exercise the clip


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_answers_without_signal_are_skipped_exactly(trl_trainer, loss_type):
    """Without the KL term the Trainer runs only the answers of nonzero advantage (rows_with_signal): the loss
    and every gradient equal those of all the answers."""
    model = trl_trainer.model
    _, roll = inputs_for_both()
    adv = torch.tensor([1.0, 0.0, 0.0, -1.2])
    tokens = roll.completion_mask.sum().float()
    results = []
    for keep in (None, rows_with_signal(adv, 0.0)):
        model.zero_grad()
        part, part_adv = (roll, adv) if keep is None else (roll.select(keep), adv[keep])
        logps = completion_logps(model, part, 0.7)
        loss, _ = grpo_loss(logps, logps.detach(), part_adv, part.completion_mask, loss_type, 0.2, 0.28,
                            max_new_tokens=6, tokens=tokens, rows=len(adv))
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert rows_with_signal(adv, 0.0).tolist() == [0, 3] and rows_with_signal(adv, 0.1) is None
    assert rows_with_signal(torch.zeros(4), 0.0).tolist() == [0]  # never empty: the graph needs a row
    (full, full_grads), (skipped, skipped_grads) = results
    assert skipped == pytest.approx(full, rel=1e-6) and full != 0
    assert len(full_grads) == len(skipped_grads)
    for a, b in zip(full_grads, skipped_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_advantages_are_trls_group_normalisation():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 0.5, float("nan"), 1.5, 1.0])
    adv, zero_std, _ = advantages(rewards, 4, "group")
    g1 = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert adv[:4].tolist() == pytest.approx(((g1 - g1.mean()) / (g1.std() + 1e-4)).tolist(), abs=1e-6)  # Bessel's std
    assert adv[4:8].tolist() == [0.0] * 4 and zero_std[4:8].all() and not zero_std[:4].any()
    g3 = torch.tensor([0.5, 1.5, 1.0])  # the unscored answer is left out of its group's mean and std, and gets 0
    expected = ((g3 - g3.mean()) / (g3.std() + 1e-4)).tolist()
    assert adv[8].item() == pytest.approx(expected[0], abs=1e-6) and adv[9].item() == 0.0
    assert adv[10:].tolist() == pytest.approx(expected[1:], abs=1e-6)
    unscaled, _, _ = advantages(rewards, 4, "none")
    assert unscaled[:4].tolist() == pytest.approx((g1 - g1.mean()).tolist())
    batch, _, _ = advantages(rewards, 4, "batch")
    finite = rewards[~rewards.isnan()]
    assert batch[0].item() == pytest.approx((1.0 - 0.25) / (finite.std().item() + 1e-4), rel=1e-5)
