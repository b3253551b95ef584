"""Preference tuning end to end on the embedded model: DPO from an SFT run raises held-out preference
accuracy, its run folder merges to exactly base + adapter and chats, and the 2-process and nf4/ORPO paths run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from llama2ft import PROJECT_ROOT

pytestmark = pytest.mark.slow


def train(run: Path, *overrides: str, launcher: list[str] | None = None):
    res = run_cli("train", *overrides, f"hydra.run.dir={run}", launcher=launcher)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def dpo_run(learned_run, tmp_path_factory):
    """The tiny preset's DPO recipe on the shipped pairs, from the session's SFT run."""
    run = tmp_path_factory.mktemp("dpo") / "run"
    res = train(run, "method=dpo", f"init_from={learned_run.path}")
    return run, res.stdout


def test_dpo_from_an_sft_run_raises_heldout_preference_accuracy(dpo_run, learned_run):
    run, stdout = dpo_run
    m = json.loads((run / "metrics.json").read_text())
    # The SFT model reads every 2 as 二; the pairs prefer 两 before 百/千 and 二 elsewhere.
    assert m["preference_accuracy_before"] == 0  # policy == reference: no pair is preferred yet
    assert m["likelihood_accuracy_before"] < 0.6
    assert m["preference_accuracy_after"] >= 0.8 and m["likelihood_accuracy_after"] >= 0.9
    assert m["chosen_match_after"] > m["chosen_match_before"]  # greedy answers now say 两千 where they should
    assert m["rewards/margins"] > 0 and m["rewards/chosen"] > m["rewards/rejected"]
    assert "preference accuracy before training" in stdout and "preference accuracy after training" in stdout
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["train"]["pairs"] == 800 and stats["eval"]["pairs"] == 60 and stats["train"]["truncated_pairs"] == 0
    cfg = (run / "config.yaml").read_text()
    assert f"init_from: {learned_run.path}" in cfg and (run / "loss.png").stat().st_size > 1000
    # the SFT adapter kept training: same modules, other values
    from safetensors.torch import load_file

    before = load_file(learned_run.path / "adapter" / "adapter_model.safetensors")
    after = load_file(run / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def merged_dpo(dpo_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "m"
    res = run_cli("merge", f"run={dpo_run[0]}", f"output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_dpo_run_merges_to_base_plus_adapter_and_chats(dpo_run, merged_dpo):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = dpo_run[0], merged_dpo
    ids = torch.tensor([[1, 400, 500, 600, 700, 12, 42]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(run / "base_model"), dtype=torch.float32)
        ref = PeftModel.from_pretrained(base, str(run / "adapter")).eval()(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()(input_ids=ids).logits
    assert float((ref - got).abs().max()) < 1e-4
    res = run_cli("chat", f"run={run}", "prompt=请用中文写出数字 2345。", "max_new_tokens=16")
    assert res.returncode == 0, res.stderr[-3000:]
    assert any(ch in res.stdout for ch in "两千百十")  # served through the run's template: a Chinese reading


def test_orpo_from_a_merged_folder(merged_dpo, tmp_path):
    """init_from=MERGED_DIR: a fresh adapter on the merged model, with the template it was published with."""
    run = tmp_path / "run"
    train(run, "method=orpo", f"init_from={merged_dpo}", "trainer.max_steps=2", "trainer.eval_steps=2",
          "sample_eval.show=0")
    cfg = (run / "config.yaml").read_text()
    assert f"name_or_path: {merged_dpo}" in cfg and "name: human_assistant" in cfg
    assert (run / "adapter" / "adapter_config.json").exists() and not (run / "base_model").exists()


def test_two_process_dpo_run(learned_run, tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(PROJECT_ROOT / "configs" / "accelerate" / "ddp.yaml")]
    run = tmp_path / "run"
    train(run, "method=dpo", f"init_from={learned_run.path}", "trainer.max_steps=4", "trainer.eval_steps=4",
          "trainer.per_device_train_batch_size=8", launcher=accelerate)
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == pytest.approx(4 * 8 * 2 / 800, rel=0.02)  # 2 processes: twice the pairs of one
    assert "rewards/margins" in m and (run / "adapter" / "adapter_model.safetensors").exists()


def test_orpo_on_a_quantized_base(learned_run, tmp_path):
    run = tmp_path / "run"
    res = train(run, "method=orpo", "quant=nf4", f"init_from={learned_run.path}", "trainer.max_steps=4",
                "trainer.eval_steps=4", "sample_eval.show=0")
    m = json.loads((run / "metrics.json").read_text())
    assert m["method"] == "orpo" and m["quantized_layers"] and "eval_nll_loss" in m
    assert "preference accuracy after training" in res.stdout


def test_method_dpo_alone_starts_from_the_embedded_sft_model(learned_run, tmp_path):
    """`llama2ft-train method=dpo` makes the default SFT run beside its own folder once and then reuses it
    (here the session's SFT run stands in for it, to skip the 800 SFT steps)."""
    import shutil

    from conftest import compose
    from llama2ft.training.preference_start import sft_folder

    folder = sft_folder(compose([]), tmp_path / "run")
    shutil.copytree(learned_run.path, folder)
    res = train(tmp_path / "run", "method=dpo", "trainer.max_steps=2", "trainer.eval_steps=2", "sample_eval.show=1")
    assert f"starting from the embedded SFT model {folder}" in res.stdout
    assert f"init_from: {folder}" in (tmp_path / "run" / "config.yaml").read_text()
