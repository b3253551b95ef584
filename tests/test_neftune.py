"""NEFTune (`trainer.neftune_noise_alpha`): noise on the input embeddings in training forwards only;
evaluation during training, and the model afterwards (generation, saving), see clean embeddings."""
from __future__ import annotations

import pytest
import torch

from conftest import compose
from llama2ft.data.collators import PadCollator
from llama2ft.model.lora import apply_lora
from llama2ft.training.arguments import training_arguments

pytestmark = pytest.mark.usefixtures("app_threads")  # conftest: torch threads as run_app gives commands

PROBE = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 2]])


def rows(n: int) -> list[dict]:
    return [{"input_ids": [1, 10 + i, 20 + i, 30 + i, 2], "labels": [1, 10 + i, 20 + i, 30 + i, 2]} for i in range(n)]


def test_noise_only_in_training_forwards(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback

    cfg = compose(["trainer.neftune_noise_alpha=5", "trainer.max_steps=3", "trainer.eval_steps=2",
                   "trainer.logging_steps=1", "trainer.save_steps=100", "trainer.per_device_train_batch_size=2",
                   "trainer.per_device_eval_batch_size=2", "lora.target_modules=[q_proj,v_proj]", "lora.modules_to_save=[]"])
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    model = apply_lora(base, cfg.lora, seed=0)
    embed = model.get_input_embeddings()
    seen: dict[str, list[float]] = {"train": [], "eval": [], "eval_during_training": []}

    eval_rows = rows(4)

    def clean_eval_loss() -> float:
        """Eval loss with the embeddings looked up directly: no module, no hook, no noise."""
        was = model.training
        model.eval()
        batch = PadCollator(0)(eval_rows)
        with torch.no_grad():
            out = model(inputs_embeds=embed.weight[batch["input_ids"]], labels=batch["labels"])
        model.train(was)
        return float(out.loss)

    def noise(training: bool) -> float:
        embed.train(training)
        with torch.no_grad():
            return float((embed(PROBE) - embed.weight[PROBE]).abs().max())

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            was = embed.training
            seen["train"].append(noise(True))
            seen["eval"].append(noise(False))
            embed.train(was)

            if state.global_step == args.eval_steps:  # the Trainer evaluates right after this
                seen["eval_during_training"].append(clean_eval_loss())

    args = training_arguments(cfg.trainer, cfg.logger, tmp_path, True, False)
    assert args.neftune_noise_alpha == 5
    trainer = Trainer(model=model, args=args, train_dataset=rows(6), eval_dataset=eval_rows,
                      data_collator=PadCollator(0), callbacks=[Probe()])
    trainer.train()
    # alpha / sqrt(L * d) bounds the uniform noise: L = 8 positions, d = 64
    bound = 5 / (8 * 64) ** 0.5
    assert seen["train"] and all(0.2 * bound < n <= bound + 1e-6 for n in seen["train"])
    assert seen["eval"] == [0.0] * len(seen["eval"])
    # evaluation inside training saw clean embeddings: its loss is the noise-free one
    logged = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e and e["step"] == 2]
    assert len(logged) == 1 and len(seen["eval_during_training"]) == 1
    assert abs(logged[0] - seen["eval_during_training"][0]) < 1e-4
    assert noise(True) == 0.0  # after training the hook is gone: generation and saving see clean embeddings


def test_no_alpha_no_noise(tmp_path):
    cfg = compose([])
    assert cfg.trainer.neftune_noise_alpha is None
    assert training_arguments(cfg.trainer, cfg.logger, tmp_path, False, False).neftune_noise_alpha is None
