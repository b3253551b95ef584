"""method=rm end to end on the embedded model: a reward model trained from an SFT run on the shipped pairs
ranks held-out pairs right, its loss is TRL RewardTrainer's, it merges into a folder stock
AutoModelForSequenceClassification loads with the run's scores, it resumes, and `load_reward_model` (what
GRPO calls) scores answers exactly as it trained, from the run or the merged folder. One RM run is shared."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_app
from test_preference_e2e import metrics, train
from llama2ft import PROJECT_ROOT
from llama2ft.data.pairs import prompt_turns
from llama2ft.training import sweeps

pytestmark = pytest.mark.slow
PAIRS_DEV = PROJECT_ROOT / "data" / "pairs" / "dev.csv"
# the recipe's 40 steps, with a checkpoint at step 30 for the resume test
RM = ["method=rm", "trainer.save_steps=30", "trainer.save_total_limit=null"]




def dev_pairs(n: int = 60) -> list[dict]:
    return list(csv.DictReader(PAIRS_DEV.open(encoding="utf-8")))[:n]


@pytest.fixture(scope="module")
def rm_run(learned_run, tmp_path_factory):
    """The tiny preset's RM recipe on the shipped pairs, from the session's SFT run."""
    run = tmp_path_factory.mktemp("rm") / "run"
    res = train(run, *RM, f"init_from={learned_run.path}")
    return run, res.stdout


@pytest.fixture(scope="module")
def merged_rm(rm_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged-rm") / "m"
    res = run_app("merge", f"run={rm_run[0]}", f"output={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "verified: max |logit diff|" in res.stdout
    return out


def test_a_reward_model_from_an_sft_run_ranks_held_out_pairs(rm_run, learned_run):
    from safetensors.torch import load_file

    run, stdout = rm_run
    m = metrics(run)
    # a fresh score head ranks about half the pairs right; 40 steps later nearly all (0.53 -> 1.0 measured)
    assert m["preference_accuracy_before"] < 0.75 and m["preference_accuracy_after"] >= 0.9
    assert m["reward_margin_after"] > m["reward_margin_before"] + 1
    assert m["method"] == "rm" and m["steps_this_run"] == 40 and m["rewards/accuracies"] > 0.8
    assert {"train_loss", "eval_loss", "eval_rewards/accuracies", "trainable_parameters"} <= set(m)
    assert not any(k.startswith(("exact_match", "chosen_match")) for k in m)  # it writes no answers
    assert "preference accuracy before training" in stdout and "preference accuracy after training" in stdout
    assert sweeps.run_row(run)["preference_accuracy_after"] == m["preference_accuracy_after"]  # a sweep's row
    assert f"load_reward_model('{run}')" in stdout  # how to use it, instead of a chat command
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    after, sft = load_file(run / "adapter" / "adapter_model.safetensors"), \
        load_file(learned_run.path / "adapter" / "adapter_model.safetensors")
    assert after["base_model.model.score.weight"].shape == (1, 128)  # the head, in full
    assert not any("lm_head" in k for k in after)  # a scorer has no LM head
    lora = [k for k in sft if "lora_" in k]
    assert lora and all(k in after and not torch.equal(sft[k], after[k]) for k in lora)  # SFT's LoRA kept training


def test_the_merged_reward_model_is_a_stock_classifier_with_the_runs_scores(rm_run, merged_rm):
    """Stock transformers + peft on the run's base and adapter, stock transformers on the merged folder, and
    `load_reward_model` on both: one score per answer, the same to 1e-4, batched or not."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llama2ft.training.reward_model import is_reward_model, load_reward_model

    from safetensors import safe_open

    run = rm_run[0]
    assert json.loads((merged_rm / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    assert not (merged_rm / "generation_config.json").exists()
    with safe_open(str(merged_rm / "model.safetensors"), "pt") as f:
        assert "score.weight" in f.keys() and "lm_head.weight" not in f.keys()
    assert is_reward_model(run) and is_reward_model(merged_rm)
    pairs = dev_pairs(12)
    conversations = [list(prompt_turns(p["prompt"])) for p in pairs]
    answers = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    from_run, from_merged = load_reward_model(str(run)), load_reward_model(str(merged_rm))
    scores = from_run.score(conversations * 2, answers)
    assert scores == pytest.approx(from_merged.score(conversations * 2, answers), abs=1e-4)
    assert scores[:3] == pytest.approx([from_run.score(conversations[i:i + 1], answers[i:i + 1])[0]
                                        for i in range(3)], abs=1e-5)  # padding in a batch changes nothing
    assert sum(c > r for c, r in zip(scores[:12], scores[12:])) >= 11

    rows = from_run.rows(conversations * 2, answers)
    tok = AutoTokenizer.from_pretrained(str(merged_rm))
    ids = [p + a for p, a in rows]
    width = max(map(len, ids))
    batch = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        stock = AutoModelForSequenceClassification.from_pretrained(str(merged_rm)).eval()
        merged = stock(input_ids=batch, attention_mask=mask).logits.squeeze(-1)
        base = AutoModelForSequenceClassification.from_pretrained(str(run / "base_model"), num_labels=1)
        live = PeftModel.from_pretrained(base, str(run / "adapter")).eval()(input_ids=batch, attention_mask=mask)
    assert merged.tolist() == pytest.approx(scores, abs=1e-4)
    assert live.logits.squeeze(-1).tolist() == pytest.approx(scores, abs=1e-4)


def test_the_merge_check_covers_the_score_head(rm_run, merged_rm, tmp_path):
    """A merged folder whose score head is off by 1% fails the merge's logits check (the right one passed it:
    `merged_rm`)."""
    from safetensors.torch import load_file, save_file

    from llama2ft.core.errors import UserError
    from llama2ft.publishing.verify import verify

    run, broken = rm_run[0], tmp_path / "broken"
    shutil.copytree(merged_rm, broken)
    weights = load_file(broken / "model.safetensors")
    weights["score.weight"] = weights["score.weight"] * 1.01
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    ids, vocab = [[1, 400, 500, 600, 2]], weights["model.embed_tokens.weight"].shape[0]
    with pytest.raises(UserError, match="verification failed"):
        verify(run / "base_model", [run / "adapter"], broken, ids, vocab, 1e-4, scorer=True)


@pytest.mark.parametrize("center", [None, 0.01])
def test_the_loss_is_trl_reward_trainers(merged_rm, tmp_path, center):
    """TRL's own RewardTrainer.compute_loss (its collator, its centring term) on the same pairs and model."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from llama2ft.data.pair_encode import PairCollator
    from llama2ft.training.methods.rm import RewardModeling, RmSettings
    from llama2ft.training.reward_model import load_reward_model

    pairs = dev_pairs(6)
    rm = load_reward_model(str(merged_rm))
    conversations = [list(prompt_turns(p["prompt"])) for p in pairs]
    chosen = rm.rows(conversations, [p["chosen"] for p in pairs])
    rejected = rm.rows(conversations, [p["rejected"] for p in pairs])
    ours = PairCollator(rm.tokenizer.pad_token_id)([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
                                                    for (p, c), (_, r) in zip(chosen, rejected)])
    examples = [{"chosen_ids": p + c, "rejected_ids": p + r} for (p, c), (_, r) in zip(chosen, rejected)]
    model = AutoModelForSequenceClassification.from_pretrained(str(merged_rm)).eval()
    tok = AutoTokenizer.from_pretrained(str(merged_rm))
    args = trl.RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, center_rewards_coefficient=center)
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tok)
    with torch.no_grad():
        theirs = trainer.compute_loss(model, DataCollatorForPreference(tok.pad_token_id)(examples))
        mine, figures = RewardModeling().batch_loss(model, ours, RmSettings(center_rewards_coefficient=center))
    assert float(mine) == pytest.approx(float(theirs), abs=1e-6) and float(mine) > 0
    assert float(figures["rewards/accuracies"]) == 1.0


def test_a_reward_model_resumes_to_the_uninterrupted_adapter(rm_run, learned_run, tmp_path):
    """Stopped after its checkpoint at step 30 (as a stop signal leaves it), the same command continues there,
    the score head and the continued SFT adapter restored, and ends where the uninterrupted run ended."""
    from safetensors.torch import load_file

    run, copy = rm_run[0], tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint-40", "adapter", "metrics.json"))
    res = train(copy, *RM, f"init_from={learned_run.path}", "sample_eval.enabled=false")
    assert f"resuming from {copy / 'checkpoints' / 'checkpoint-30'}" in res.stdout
    assert metrics(copy)["steps_this_run"] == 10
    want, got = (load_file(r / "adapter" / "adapter_model.safetensors") for r in (run, copy))
    assert want.keys() == got.keys()
    assert max(float((want[k] - got[k]).abs().max()) for k in want) < 1e-6


def test_a_reward_model_scores_the_ids_it_trained_on(tmp_path, any_tokenizer):
    """`RewardModel.rows` (what `score` feeds) equals the training encoding of the same pairs, on the embedded
    and the real Llama-2 tokenizer: the chat prompt, then the SFT answer with its EOS."""
    from omegaconf import OmegaConf

    from conftest import compose
    from llama2ft.data.pair_encode import PAIRS
    from llama2ft.data.pipeline import prepare_data
    from llama2ft.data.templates import get_template
    from llama2ft.training.reward_model import RewardModel

    pairs = tmp_path / "pairs.csv"
    dialogue = "<s>Human: 3382 用中文怎么写？\n</s><s>Assistant: 三千三百八十二\n</s><s>Human: 数字 2056 呢？\n</s>"
    pairs.write_text(f'prompt,chosen,rejected\n"{dialogue}",两千零五十六,二千零五十六\n'
                     "Say 17 in Chinese.,十七 (shí qī),Seventeen\n", encoding="utf-8")
    data = OmegaConf.merge(compose([]).data, {"train_file": str(pairs), "eval_file": None, "eval_fraction": 0.0,
                                              "cache": False})
    template = get_template("llama2_inst", "请用中文回答。")
    trained = list(prepare_data(data, template, any_tokenizer, 0, PAIRS).train)
    rm = RewardModel(None, any_tokenizer, template, torch.device("cpu"), 4096, "rm")
    conversations = [list(prompt_turns(dialogue)), list(prompt_turns("Say 17 in Chinese."))]
    assert rm.rows(conversations, ["两千零五十六", "十七 (shí qī)"]) == [(r["prompt_ids"], r["chosen_ids"]) for r in trained]
    assert rm.rows(conversations[1:], ["Seventeen"]) == [(trained[1]["prompt_ids"], trained[1]["rejected_ids"])]


def test_what_is_no_reward_model_is_refused_in_one_line(learned_run, rm_run, merged_rm, tmp_path):
    from llama2ft.core.errors import UserError
    from llama2ft.training.reward_model import is_reward_model, load_reward_model

    for path in (learned_run.path, learned_run.path / "base_model", tmp_path / "nothing"):
        assert not is_reward_model(path)
        with pytest.raises(UserError, match=f"{path} is not a reward model"):
            load_reward_model(str(path))
    # a reward model writes no answers: chat, web, API and eval load models through one function that says so
    # (and a causal LM's method cannot start from one)
    for res, path in ((run_app("chat", f"run={rm_run[0]}", "prompt=你好"), rm_run[0]),
                      (run_app("eval", f"models=[{rm_run[0]}]", f"output={tmp_path / 'eval'}"), rm_run[0]),
                      (run_app("train", "method=orpo", f"init_from={merged_rm}", f"hydra.run.dir={tmp_path / 'o'}"),
                       merged_rm)):
        assert res.returncode == 2 and "Traceback" not in res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"{path} is a reward model (method=rm)" in errors[0], res.stderr
