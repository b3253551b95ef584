"""LoRA variants through the `lora` group (DoRA, rsLoRA, gaussian/PiSSA/OLoRA init) and LoRA+: peft is
configured as asked, impossible combinations are config errors, every variant trains and
`llama2ft-merge` folds it within the logits tolerance (PiSSA/OLoRA: equal to the model as trained)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose, offline_env, run_app, train_ok
from llama2ft.config.validation import collect_problems
from llama2ft.model.lora import apply_lora

pytestmark = pytest.mark.usefixtures("app_threads")  # conftest: torch threads as run_app gives commands

IDS = [[1, 400, 500, 60, 70, 12, 42], [1, 300, 301, 302]]


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def lora_node(**kw):
    base = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "modules_to_save": [],
            "use_dora": False, "use_rslora": False, "init": "default"}
    return OmegaConf.create({**base, **kw})


def logits(model, ids=IDS) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=torch.tensor([x])).logits[0].float() for x in ids]


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


# ---------------------------------------------------------------- config
def test_variant_config_errors_are_collected_before_loading():
    cfg = compose(["lora.init=svd", "trainer.loraplus_lr_ratio=0.5", "trainer.neftune_noise_alpha=-1"])
    problems = collect_problems(cfg)
    assert any(p.startswith("lora.init='svd': must be one of default, gaussian, pissa, olora") for p in problems)
    assert any(p.startswith("trainer.loraplus_lr_ratio=0.5: must be >= 1") for p in problems)
    assert any(p.startswith("trainer.neftune_noise_alpha=-1.0: must be > 0") for p in problems)


@pytest.mark.parametrize("init,quant", [("pissa", "nf4"), ("olora", "int8")])
def test_base_changing_init_with_quantized_base_is_refused(init, quant):
    problems = collect_problems(compose([f"lora.init={init}", f"quant={quant}"]))
    assert [p for p in problems if p.startswith(f"lora.init={init} with quant={quant}: ")], problems


def test_qlora_combinations_that_work_are_accepted():
    for overrides in (["quant=nf4", "lora.use_dora=true", "lora.use_rslora=true", "lora.init=gaussian",
                       "trainer.loraplus_lr_ratio=16", "trainer.neftune_noise_alpha=5"],
                      ["lora.init=olora", "lora.use_rslora=true"], ["lora.init=pissa"]):
        assert collect_problems(compose(overrides)) == [], overrides


def test_pissa_with_dora_and_variants_without_adapter_are_refused():
    problems = collect_problems(compose(["lora.init=pissa", "lora.use_dora=true"]))
    assert any(p.startswith("lora.init=pissa with lora.use_dora=true") for p in problems)
    problems = collect_problems(compose(["lora=full", "lora.use_dora=true", "trainer.loraplus_lr_ratio=4"]))
    assert any(p.startswith("lora.use_dora: need a LoRA adapter") for p in problems)
    assert any(p.startswith("trainer.loraplus_lr_ratio: needs a LoRA adapter") for p in problems)


def test_bad_variant_reaches_the_user_as_one_error_block(tmp_path):
    res = run_app("train", "experiment=tiny_smoke", "lora.init=pissa", "quant=nf4", f"hydra.run.dir={tmp_path}/r")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "lora.init=pissa with quant=nf4" in res.stderr
    assert not (tmp_path / "r" / "base_model").exists()  # refused before any model was built


# ---------------------------------------------------------------- peft wiring
def test_dora_rslora_and_inits_reach_peft():
    dora = apply_lora(tiny_llama(), lora_node(use_dora=True, use_rslora=True), seed=0)
    q = dora.base_model.model.model.layers[0].self_attn.q_proj
    assert "default" in q.lora_magnitude_vector
    assert q.scaling["default"] == pytest.approx(8 / 4 ** 0.5)  # rsLoRA: alpha / sqrt(r)
    plain = apply_lora(tiny_llama(), lora_node(), seed=0).base_model.model.model.layers[0].self_attn.q_proj
    assert plain.scaling["default"] == pytest.approx(8 / 4) and not plain.use_dora["default"]

    gauss = apply_lora(tiny_llama(), lora_node(init="gaussian"), seed=0).base_model.model.model.layers[0]
    a = gauss.self_attn.q_proj.lora_A["default"].weight
    assert float(a.detach().std()) == pytest.approx(1 / 4, rel=0.2)  # peft's gaussian: A ~ N(0, 1/r), B = 0
    assert float(gauss.self_attn.q_proj.lora_B["default"].weight.abs().max()) == 0


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_rewrite_the_base_but_not_the_output(init):
    original = tiny_llama()
    w = original.model.layers[0].self_attn.q_proj.weight.detach().clone()
    before = logits(original)
    model = apply_lora(original, lora_node(init=init), seed=0)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert float((layer.base_layer.weight - w).abs().max()) > 1e-3  # the residual replaced the base weight
    assert float(layer.lora_B["default"].weight.abs().max()) > 0
    assert max_diff(before, logits(model)) < 1e-4  # residual + adapter == the original model


def test_loraplus_optimizer_reaches_the_trainer_with_b_learning_faster(tmp_path):
    from transformers import Trainer

    from llama2ft.training.arguments import training_arguments
    from llama2ft.training.optimizer import optimizer_factory

    cfg = compose(["trainer.loraplus_lr_ratio=16", "trainer.learning_rate=1e-3", "trainer.weight_decay=0.01"])
    model = apply_lora(tiny_llama(), lora_node(), seed=0)
    args = training_arguments(cfg.trainer, cfg.logger, tmp_path, False, False)
    trainer = Trainer(model=model, args=args,
                      optimizer_cls_and_kwargs=optimizer_factory(args, cfg.trainer.loraplus_lr_ratio))
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    a = [n for n in named if "lora_A" in n]
    b = [n for n in named if "lora_B" in n]
    assert a and b and all(id(named[n]) in lr_of for n in a + b)
    assert [lr_of[id(named[n])] for n in a] == pytest.approx([1e-3] * len(a))
    assert [lr_of[id(named[n])] for n in b] == pytest.approx([16e-3] * len(b))
    assert isinstance(optimizer, torch.optim.AdamW)  # trainer.optim=adamw_torch, as without LoRA+
    assert optimizer_factory(args, None) is None  # no ratio: the Trainer's own optimizer


# ---------------------------------------------------------------- merge
def random_dora_adapter(base_dir: Path, out: Path, rslora: bool) -> Path:
    """A DoRA adapter with random A, B and magnitudes (far from the initial row norms)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                                  use_dora=True, use_rslora=rslora, init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.5 * torch.rand_like(p))
    peft_model.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("rslora", [False, True])
def test_streaming_merge_folds_dora_like_peft(tmp_path, rslora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llama2ft.publishing.merge import check_fits, read_adapter, write_weights
    from llama2ft.publishing.safetensors_stream import base_tensors

    base_dir = tmp_path / "base"
    tiny_llama(1).save_pretrained(str(base_dir))
    adapter = random_dora_adapter(base_dir, tmp_path / "dora", rslora)
    out = tmp_path / "merged"
    out.mkdir()
    adapters = [read_adapter(adapter)]
    assert adapters[0].magnitudes  # DoRA is read, not refused
    write_weights(check_fits(adapters, base_tensors(base_dir)), adapters, out, torch.float32, 1 << 30)
    (out / "config.json").write_text((base_dir / "config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    plain = logits(base)
    ref = logits(PeftModel.from_pretrained(base, str(adapter)).eval())
    got = logits(AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval())
    assert max_diff(ref, got) < 1e-4
    assert max_diff(plain, got) > 1e-2  # the magnitudes really changed the model


# ---------------------------------------------------------------- end to end
VARIANTS = {
    # QLoRA: DoRA, rsLoRA and LoRA+ on a 4-bit base (bitsandbytes trains NF4 on CPU), merged into the float base
    "qdora_rslora_gaussian_loraplus": ["quant=nf4", "lora.use_dora=true", "lora.use_rslora=true",
                                       "lora.init=gaussian", "trainer.loraplus_lr_ratio=8",
                                       "trainer.neftune_noise_alpha=5"],
    "pissa": ["lora.init=pissa"],
    "olora_rslora": ["lora.init=olora", "lora.use_rslora=true"],
}


# the PiSSA run saves every 5 steps: the variant test reads checkpoint-10, the resume test starts from checkpoint-5
PISSA = ["experiment=tiny_smoke", *VARIANTS["pissa"], "trainer.save_steps=5"]


@pytest.fixture(scope="module")
def pissa_run(tmp_path_factory) -> Path:
    """The PiSSA variant's run, trained once for the variant test and the resume test (both only read it)."""
    run = tmp_path_factory.mktemp("pissa") / "full"
    train_ok(run, *PISSA, env=offline_env(tmp_path_factory.getbasetemp()))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_and_merges_within_tolerance(tmp_path, name, request):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = tmp_path / "run", tmp_path / "merged"
    if name == "pissa":
        run = request.getfixturevalue("pissa_run")
    else:
        train_ok(run, "experiment=tiny_smoke", *VARIANTS[name])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_loss"] > 0 and metrics["steps_this_run"] == 10
    res = run_app("merge", f"run={run}", f"output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "verified: max |logit diff|" in res.stdout

    def load(path: Path):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()

    merged = logits(load(out))
    assert max_diff(logits(load(run / "base_model")), merged) > 1e-2  # training changed the model
    # the model as it trained: for PiSSA/OLoRA the last checkpoint's unconverted adapter on the base that
    # peft rewrites again when it loads it (its adapter_config still says pissa/olora)
    trained = logits(PeftModel.from_pretrained(load(run / "base_model"), str(run / "checkpoints" / "checkpoint-10")))
    assert max_diff(trained, merged) < 1e-4
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    if name in ("pissa", "olora_rslora"):
        assert saved["init_lora_weights"] is True and saved["r"] == 16  # converted: plain LoRA of rank 2r
    else:
        assert saved["use_dora"] and saved["use_rslora"]


@pytest.mark.slow
def test_resumed_pissa_run_saves_the_same_converted_adapter(pissa_run, tmp_path):
    """Resuming rebuilds the PiSSA residual and the initial adapter: the converted adapter equals the
    uninterrupted run's."""
    from safetensors.torch import load_file

    full, resumed = pissa_run, tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-5", resumed / "checkpoints" / "checkpoint-5")
    train_ok(resumed, *PISSA, "trainer.resume=true")
    assert json.loads((resumed / "metrics.json").read_text())["steps_this_run"] == 5
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
