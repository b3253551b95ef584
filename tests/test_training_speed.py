"""Training speed settings: Liger kernels, gradient checkpointing only when a step would not fit, torch.compile
and the packed-row attention; what the training skeleton hands the Trainer, and the config errors."""
from __future__ import annotations

import pytest
import torch

from conftest import compose, run_app
from llama2ft.config.validation import collect_problems
from llama2ft.model import attention, kernels
from llama2ft.model.memory import GIB, Shape, layer_activation_elements, lora_parameters, plan_checkpointing

pytestmark = pytest.mark.usefixtures("app_threads")  # conftest: torch threads as run_app gives commands

LLAMA_7B = Shape(hidden=4096, intermediate=11008, layers=32, kv_hidden=4096, vocab=32000)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def plan_7b(setting: str = "auto", free_gib: float = 80, weights_gib: float = 12.6, tokens: int = 2 * 2048,
            fused: bool = False, dropout: bool = True):
    return plan_checkpointing(setting, shape=LLAMA_7B, tokens=tokens, dtype_bytes=2,
                              weight_bytes=int(weights_gib * GIB),
                              trainable=lora_parameters(LLAMA_7B, 64, PROJECTIONS, []),
                              free_bytes=int(free_gib * GIB), lora_dropout=dropout, fused_loss=fused)


def test_activation_estimate_of_the_7b_shape():
    """Without dropout a layer keeps ~105k values per token (~6.8 MB per token over 32 layers in bf16); LoRA
    r 64 on all seven projections is ~160M parameters."""
    assert layer_activation_elements(LLAMA_7B, lora_dropout=False) == 11 * 4096 + 4 * 4096 + 4 * 11008
    assert lora_parameters(LLAMA_7B, 64, PROJECTIONS, []) == 64 * 32 * (4 * 8192 + 3 * (4096 + 11008))
    plan = plan_7b()
    assert 45 * GIB < plan.needed_bytes < 60 * GIB  # 2 x 2048 tokens, bf16, LoRA dropout


def test_checkpointing_auto_turns_on_only_when_the_step_does_not_fit():
    assert not plan_7b(free_gib=139).enabled  # an H200: ~53 GiB fits
    assert plan_7b(free_gib=40).enabled  # a 40 GB card does not hold it
    assert plan_7b(free_gib=24, weights_gib=3.7, tokens=2048).enabled  # QLoRA on a 24 GB card, one 2048 row
    # the same step without dropout and with the fused loss needs less: it fits where the other does not
    lean, fat = plan_7b(free_gib=50, fused=True, dropout=False), plan_7b(free_gib=50)
    assert lean.needed_bytes < fat.needed_bytes and not lean.enabled and fat.enabled
    assert "fits in 85% of 139.0 GiB free" in plan_7b(free_gib=139).message
    assert "does not fit" in plan_7b(free_gib=40).message


def test_explicit_checkpointing_setting_wins():
    assert plan_7b("true", free_gib=1000).enabled
    assert not plan_7b("false", free_gib=1).enabled
    assert "trainer.gradient_checkpointing=false" in plan_7b("false", free_gib=1).message


def test_liger_auto_only_on_gpu_with_the_package(monkeypatch):
    monkeypatch.setattr(kernels, "liger_installed", lambda: True)
    assert kernels.use_liger("auto", on_gpu=True) and not kernels.use_liger("auto", on_gpu=False)
    assert not kernels.use_liger("none", on_gpu=True) and kernels.use_liger("liger", on_gpu=True)
    monkeypatch.setattr(kernels, "liger_installed", lambda: False)
    assert not kernels.use_liger("auto", on_gpu=True)


def test_kernel_and_checkpointing_config_errors(monkeypatch):
    monkeypatch.setattr(kernels, "liger_installed", lambda: False)
    problems = collect_problems(compose(["trainer.kernels=liger", "trainer.gradient_checkpointing=sometimes"]))
    assert any("trainer.kernels=liger: Liger's Triton kernels need a CUDA GPU" in p for p in problems), problems
    assert any("trainer.kernels=liger: liger-kernel is not installed" in p for p in problems), problems
    assert any("trainer.gradient_checkpointing='sometimes'" in p for p in problems), problems
    assert any("trainer.kernels='fast'" in p for p in collect_problems(compose(["trainer.kernels=fast"])))
    for ok in (["trainer.kernels=none", "trainer.gradient_checkpointing=true"],
               ["trainer.gradient_checkpointing=false"]):
        assert not [p for p in collect_problems(compose(ok)) if "trainer." in p]


def test_cli_rejects_liger_on_cpu_before_loading_a_model(tmp_path):
    res = run_app("train", "experiment=tiny_smoke", "trainer.kernels=liger", f"hydra.run.dir={tmp_path}/run")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    assert "trainer.kernels=liger: Liger's Triton kernels need a CUDA GPU" in res.stderr
    assert not (tmp_path / "run" / "base_model").exists()


class _Stop(Exception):
    pass


def test_the_skeleton_hands_the_speed_settings_to_the_trainer(tmp_path, monkeypatch):
    """kernels, gradient checkpointing and compile reach TrainingArguments; the decision is logged."""
    import transformers
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from llama2ft.training import pipeline, speed
    from llama2ft.training.methods import get_method

    seen = {}

    def train(self, **kwargs):  # the real Trainer is built; training stops before it starts
        seen.update(model=self.model, args=self.args)
        raise _Stop

    monkeypatch.setattr(transformers.Trainer, "train", train)
    monkeypatch.setattr(speed, "use_liger", lambda kernels, on_gpu: kernels != "none")  # as on a GPU with liger
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "no")  # torch_compile=True sets it; restored afterwards
    monkeypatch.setenv("LLAMA2FT_CACHE_DIR", str(tmp_path / "cache"))
    for overrides, liger, ckpt, compiled in ((["trainer.kernels=liger", "trainer.compile=true",
                                               "trainer.gradient_checkpointing=true"], True, True, True),
                                             (["trainer.kernels=none"], False, False, False)):
        cfg = compose(["experiment=tiny_smoke", f"paths.output_dir={tmp_path}", *overrides])
        HydraConfig.instance().set_config(cfg)  # the ${hydra:...} interpolations of paths
        cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                                      resolve=True))
        out = tmp_path / f"run{len(seen)}"
        out.mkdir()
        with pytest.raises(_Stop):
            pipeline.run_training(cfg, get_method("sft"), out, resume=False)
        args = seen["args"]
        assert (args.use_liger_kernel, args.activation_checkpointing, args.torch_compile) == (liger, ckpt, compiled)
    assert "gradient checkpointing: off (auto:" in "\n".join(plan.message for plan in [
        speed.plan_speed(compose(["experiment=tiny_smoke"]), seen["model"].base_model.model,
                         torch.device("cpu")).checkpointing])


def test_packed_attention_choice_per_device(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    monkeypatch.setattr(attention, "flex_available", lambda: True)
    assert attention.packed_attention(cuda=True) == "flex_attention"
    monkeypatch.setattr(attention, "flex_available", lambda: False)
    assert attention.packed_attention(cuda=True) == "sdpa"
    assert attention.packed_attention(cuda=False) == attention.NAME  # per-sample SDPA: flex has no CPU backward
    # flex compiles per shape and works in blocks of 128: packed batches take few lengths
    assert attention.packed_row_multiple("flex_attention") == 128 and attention.packed_row_multiple("sdpa") == 8
