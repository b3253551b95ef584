"""Preference tuning end to end on the embedded model: DPO, SimPO and KTO from an SFT run raise their
held-out figures, a DPO run merges to exactly base + adapter and chats, every method reports the same
run metrics and resumes alike, and the 2-process, nf4 and merged-folder paths run."""
from __future__ import annotations

import csv
import itertools
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose, run_app, run_cli
from llama2ft import PROJECT_ROOT

pytestmark = pytest.mark.slow
# what every run's metrics.json holds, whatever its method (the skeleton writes them)
RUN_METRICS = {"train_loss", "eval_loss", "wall_seconds", "trainable_parameters", "steps_this_run", "quantized_layers",
               "method", "attention", "kernels", "torch_compile", "gradient_checkpointing"}
FEW_PAIRS = 128


def train(run: Path, *overrides: str):
    res = run_app("train", *overrides, f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def few_pairs(tmp_path_factory) -> list[str]:
    """Overrides for the runs that check plumbing (resume, two processes, where a run starts, nf4) rather than
    what the recipe learns: the first 128 of the 800 shipped training pairs and 16 of the 60 held-out ones. A
    reference scores every pair before training and the held-out pairs are scored four times: under a fifth of it."""
    folder = tmp_path_factory.mktemp("pairs")
    for name, n in (("train.csv", FEW_PAIRS), ("dev.csv", 16)):
        with open(PROJECT_ROOT / "data" / "pairs" / name, encoding="utf-8", newline="") as f:
            rows = list(itertools.islice(csv.reader(f), 1 + n))
        with open(folder / name, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(rows)
    return [f"data.train_file={folder / 'train.csv'}", f"data.eval_file={folder / 'dev.csv'}"]


@pytest.fixture(scope="module")
def dpo_run(learned_run, tmp_path_factory):
    """The tiny preset's DPO recipe on the shipped pairs, from the session's SFT run."""
    run = tmp_path_factory.mktemp("dpo") / "run"
    res = train(run, "method=dpo", f"init_from={learned_run.path}")
    return run, res.stdout


def test_dpo_from_an_sft_run_raises_heldout_preference_accuracy(dpo_run, learned_run):
    run, stdout = dpo_run
    m = metrics(run)
    # The SFT model reads every 2 as 二; the pairs prefer 两 before 百/千 and 二 elsewhere.
    assert m["preference_accuracy_before"] == 0  # policy == reference: no pair is preferred yet
    assert m["likelihood_accuracy_before"] < 0.6
    assert m["preference_accuracy_after"] >= 0.8 and m["likelihood_accuracy_after"] >= 0.9
    assert m["chosen_match_after"] > m["chosen_match_before"]  # greedy answers now say 两千 where they should
    assert m["rewards/margins"] > 0 and m["rewards/chosen"] > m["rewards/rejected"]
    assert RUN_METRICS <= set(m) and m["method"] == "dpo"
    assert "preference accuracy before training" in stdout and "preference accuracy after training" in stdout
    assert "chosen match after training" in stdout  # the greedy answers shown as for SFT
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["pairs"] == 800 and stats["eval"]["pairs"] == 60 and stats["truncated_pairs"] == 0
    preview = [json.loads(line) for line in (run / "preview.jsonl").read_text().splitlines()]
    assert preview and {"input_ids", "labels", "rejected_ids"} <= set(preview[0])
    cfg = (run / "config.yaml").read_text()
    assert f"init_from: {learned_run.path}" in cfg and (run / "loss.png").stat().st_size > 1000
    # the SFT adapter kept training: same modules, other values
    from safetensors.torch import load_file

    before = load_file(learned_run.path / "adapter" / "adapter_model.safetensors")
    after = load_file(run / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", ["simpo", "kto"])
def test_simpo_and_kto_from_an_sft_run(learned_run, tmp_path, method):
    """The two methods added as plug-ins, with the tiny preset's recipes: SimPO without any reference,
    KTO on the pairs split into desirable and undesirable completions."""
    run = tmp_path / method
    res = train(run, f"method={method}", f"init_from={learned_run.path}", "sample_eval.show=1")
    m = metrics(run)
    assert RUN_METRICS <= set(m) and m["method"] == method
    assert m["chosen_match_after"] >= m["chosen_match_before"]  # greedy answers did not degrade
    if method == "simpo":
        assert m["preference_accuracy_after"] >= 0.8 > m["preference_accuracy_before"]
        assert "reference log-probs" not in res.stdout  # reference-free
    else:
        assert m["reward_accuracy_before"] == 0 and m["reward_accuracy_after"] >= 0.6  # 0.72 measured
        stats = json.loads((run / "data_stats.json").read_text())
        assert stats["desirable"] == stats["undesirable"] == 800 and "kl" in m
    assert m["rewards/margins"] > 0


@pytest.fixture(scope="module")
def merged_dpo(dpo_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "m"
    res = run_app("merge", f"run={dpo_run[0]}", f"output={out}")
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
    res = run_app("chat", f"run={run}", "prompt=请用中文写出数字 2345。", "max_new_tokens=16")
    assert res.returncode == 0, res.stderr[-3000:]
    assert any(ch in res.stdout for ch in "两千百十")  # served through the run's template: a Chinese reading


def test_orpo_from_a_merged_folder(merged_dpo, few_pairs, tmp_path):
    """init_from=MERGED_DIR: a fresh adapter on the merged model, with the template it was published with."""
    run = tmp_path / "run"
    train(run, "method=orpo", f"init_from={merged_dpo}", *few_pairs, "trainer.max_steps=2", "trainer.eval_steps=2",
          "sample_eval.show=0")
    cfg = (run / "config.yaml").read_text()
    assert f"name_or_path: {merged_dpo}" in cfg and "name: human_assistant" in cfg
    assert (run / "adapter" / "adapter_config.json").exists() and not (run / "base_model").exists()


def test_a_preference_run_resumes_and_says_so(learned_run, few_pairs, tmp_path):
    """The skeleton's checkpoint and resume, for a method with a reference: an interrupted run continues
    from its last checkpoint and counts only the steps it ran."""
    run = tmp_path / "run"
    common = ["method=dpo", f"init_from={learned_run.path}", *few_pairs, "trainer.max_steps=4",
              "trainer.save_steps=2",
              "trainer.eval_steps=4", "trainer.save_total_limit=null", "sample_eval.enabled=false"]
    train(run, *common)
    for part in ("adapter", "metrics.json", "checkpoints/checkpoint-4"):  # as if stopped after step 2
        shutil.rmtree(run / part) if (run / part).is_dir() else (run / part).unlink()
    res = train(run, *common, "trainer.resume=true")
    assert f"resuming from {run / 'checkpoints' / 'checkpoint-2'}" in res.stdout
    assert metrics(run)["steps_this_run"] == 2


def test_two_process_dpo_run(learned_run, few_pairs, tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(PROJECT_ROOT / "configs" / "accelerate" / "ddp.yaml")]
    run = tmp_path / "run"
    res = run_cli("train", "method=dpo", f"init_from={learned_run.path}", *few_pairs,
                  "trainer.max_steps=4", "trainer.eval_steps=4", "trainer.per_device_train_batch_size=8",
                  f"hydra.run.dir={run}", launcher=accelerate,
                  env={"OMP_NUM_THREADS": "1"})  # two processes on the 2 cores: one thread each
    assert res.returncode == 0, res.stderr[-3000:]
    m = metrics(run)
    assert m["epoch"] == pytest.approx(4 * 8 * 2 / FEW_PAIRS, rel=0.02)  # 2 processes: twice the pairs of one
    assert "rewards/margins" in m and (run / "adapter" / "adapter_model.safetensors").exists()


def test_orpo_on_a_quantized_base(learned_run, few_pairs, tmp_path):
    run = tmp_path / "run"
    res = train(run, "method=orpo", "quant=nf4", f"init_from={learned_run.path}", *few_pairs, "trainer.max_steps=4",
                "trainer.eval_steps=4", "sample_eval.show=0")
    m = metrics(run)
    assert m["method"] == "orpo" and m["quantized_layers"] and "eval_nll_loss" in m
    assert "preference accuracy after training" in res.stdout


def test_method_dpo_alone_starts_from_the_embedded_sft_model(learned_run, few_pairs, tmp_path):
    """`llama2ft-train method=dpo` makes the default SFT run beside its own folder once and then reuses it
    (here the session's SFT run stands in for it, to skip the 800 SFT steps)."""
    from omegaconf import OmegaConf

    from llama2ft.training.methods.sft import SftSettings
    from llama2ft.training.start import embedded_sft_config, embedded_start_folder

    overrides = ["method=dpo", *few_pairs, "trainer.max_steps=2", "trainer.eval_steps=2",
                 "sample_eval.show=1"]
    sft_cfg = embedded_sft_config(compose(overrides), OmegaConf.structured(SftSettings))
    folder = embedded_start_folder(sft_cfg, tmp_path / "run")
    shutil.copytree(learned_run.path, folder)
    res = train(tmp_path / "run", *overrides)
    assert f"starting from the embedded SFT model {folder}" in res.stdout
    assert f"init_from: {folder}" in (tmp_path / "run" / "config.yaml").read_text()



def test_run_folders_written_before_the_skeleton_still_load(learned_run, few_pairs, tmp_path):
    """A run folder from before methods were plug-ins (its config.yaml's `method` node held every
    preference key, whatever the method): chat, merge and a DPO `init_from` take it as before."""
    import yaml

    old = tmp_path / "old-run"
    shutil.copytree(learned_run.path, old, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = yaml.safe_load((old / "config.yaml").read_text(encoding="utf-8"))
    cfg["method"] = {"name": "sft", "beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.0, "sft_weight": 0.0}
    (old / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    (old / "preview.jsonl").unlink(missing_ok=True)
    res = run_app("chat", f"run={old}", "prompt=数字 680 的中文读法是什么？", "temperature=0", "max_new_tokens=8")
    assert res.returncode == 0 and res.stdout.strip(), res.stderr[-2000:]
    res = run_app("merge", f"run={old}", f"output={tmp_path / 'merged'}")
    assert res.returncode == 0 and (tmp_path / "merged" / "config.json").is_file(), res.stderr[-2000:]
    train(tmp_path / "dpo", "method=dpo", f"init_from={old}", *few_pairs, "trainer.max_steps=2",
          "trainer.eval_steps=2", "sample_eval.enabled=false")
    assert metrics(tmp_path / "dpo")["method"] == "dpo"
