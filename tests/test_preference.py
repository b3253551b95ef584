"""Preference tuning (method=dpo / orpo): losses against hand computations, pairs encoded through the SFT
templates with only answer tokens scored, a frozen reference, and one clear error per bad pairs file."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from llama2ft.config.validation import collect_problems
from llama2ft.core.errors import DataError
from llama2ft.data.dialogue import Turn
from llama2ft.data.pairs import PairCollator, as_features, prepare_pairs, read_pairs
from llama2ft.data.templates import IGNORE_INDEX, encode_dialogue, encode_prompt, get_template
from llama2ft.model.preference_loss import dpo_loss, orpo_loss, sequence_logps

HEADER = "prompt,chosen,rejected\n"


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def data_node(train: Path, max_seq_len: int = 128, eval_file=None) -> OmegaConf:
    return OmegaConf.create(dict(train_file=str(train), eval_file=eval_file, eval_fraction=0.0, encoding=None,
                                 skip_bad_rows=False, max_seq_len=max_seq_len))


# ---------------------------------------------------------------- losses by hand
def test_sequence_logps_sums_only_labelled_next_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [1 / 3] * 3]]))
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2]])  # position 1 predicts token 1, position 2 token 2
    logp, n = sequence_logps(logits, labels, IGNORE_INDEX)
    assert n.tolist() == [2]
    assert logp.item() == pytest.approx(math.log(0.6) + math.log(0.6), abs=1e-6)


def test_dpo_losses_match_hand_computation():
    c, r, rc, rr, beta = t(-3.0, -5.0), t(-4.0, -2.0), t(-3.5, -4.0), t(-3.5, -3.0), 0.5
    h = [(-3.0 + 3.5) - (-4.0 + 3.5), (-5.0 + 4.0) - (-2.0 + 3.0)]  # [1.0, -2.0]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
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
    assert r_["chosen"].item() == pytest.approx(beta * avg_c) and r_["log_odds"].item() == pytest.approx(log_or)


# ---------------------------------------------------------------- pairs through the SFT templates
def test_pair_ids_are_the_chat_prompt_and_the_sft_answer(tmp_path, any_tokenizer):
    tok = any_tokenizer
    f = tmp_path / "p.csv"
    dialogue = "<s>Human: 3382 用中文怎么写？\n</s><s>Assistant: 三千三百八十二\n</s><s>Human: 数字 2056 呢？\n</s>"
    f.write_text(HEADER + f'"{dialogue}",两千零五十六,二千零五十六\n请用中文写出数字 17。,十七,一十七\n', encoding="utf-8")
    template = get_template("human_assistant")
    splits = prepare_pairs(data_node(f), template, tok, 0)
    for pair, enc in zip(read_pairs(str(f), None, False)[0], splits.train):
        assert enc.prompt_ids == encode_prompt(template, tok, pair.turns)  # what chat/API feed
        for answer, ids in ((pair.chosen, enc.chosen_ids), (pair.rejected, enc.rejected_ids)):
            sft = encode_dialogue(template, tok, [*pair.turns, Turn("assistant", answer)])
            trained = [i for i, lab in zip(sft.input_ids, sft.labels) if lab != IGNORE_INDEX]
            assert ids == trained[-len(ids):] and ids[-1] == tok.eos_token_id  # answer + closing + EOS, as SFT
            assert sft.input_ids == enc.prompt_ids + ids  # one sequence, split where the answer starts
    batch = PairCollator(tok.pad_token_id)(as_features(splits.train))
    for row, enc in enumerate([*splits.train, *splits.train]):
        n_prompt = len(enc.prompt_ids)
        assert (batch["labels"][row, :n_prompt] == IGNORE_INDEX).all()  # prompt tokens are never scored
        answer = enc.chosen_ids if row < 2 else enc.rejected_ids
        assert batch["labels"][row, n_prompt:n_prompt + len(answer)].tolist() == answer
        assert (batch["labels"][row, n_prompt + len(answer):] == IGNORE_INDEX).all()



def test_pairs_from_jsonl_and_parquet_equal_the_csv(tmp_path, tokenizer):
    import json

    import pandas as pd

    rows = [{"prompt": "<s>Human: 3382 用中文怎么写？\n</s><s>Assistant: 三千三百八十二\n</s><s>Human: 数字 2056 呢？\n</s>",
             "chosen": "两千零五十六", "rejected": "二千零五十六"},
            {"prompt": "请用中文写出数字 17。", "chosen": "十七", "rejected": "一十七"}]
    csv, jsonl, parquet = tmp_path / "p.csv", tmp_path / "p.jsonl", tmp_path / "p.parquet"
    pd.DataFrame(rows).to_csv(csv, index=False)
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pd.DataFrame(rows).to_parquet(parquet)
    template = get_template("human_assistant")
    want = prepare_pairs(data_node(csv), template, tokenizer, 0).train
    for f in (jsonl, parquet):
        got = prepare_pairs(data_node(f), template, tokenizer, 0).train
        assert [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in got] == \
            [(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in want]
    jsonl.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n",
                     encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.jsonl line 2: no field 'rejected'"):
        prepare_pairs(data_node(jsonl), template, tokenizer, 0)
    jsonl.write_text(json.dumps({"prompt": "q", "chosen": "同", "rejected": "同"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.jsonl line 1: chosen and rejected are the same text"):
        prepare_pairs(data_node(jsonl), template, tokenizer, 0)

BAD_FILES = {
    "missing column": ("prompt,chosen\nq,a\n", "has no column 'rejected'"),
    "empty chosen": (HEADER + "q,a,b\nq2,,b\n", "row 2: empty chosen answer"),
    "empty rejected": (HEADER + "q,a,\n", "row 1: empty rejected answer"),
    "same answers": (HEADER + "q,a,b\nq2,十七, 十七\n", "row 2: chosen and rejected are the same text"),
    "ends with an answer": (HEADER + '"<s>Human: q\n</s><s>Assistant: a\n</s>",a,b\n',
                            "row 1: the prompt does not end with a Human turn"),
    "malformed dialogue": (HEADER + '"<s>Human: q",a,b\n', "row 1:"),
    "prompt fills max_seq_len": (HEADER + f"{'很长' * 80},a,b\n", "row 1: the prompt alone is"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_pairs_file_one_clear_error(tmp_path, tokenizer, case):
    text, needle = BAD_FILES[case]
    f = tmp_path / "pairs.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        prepare_pairs(data_node(f, max_seq_len=64), get_template("human_assistant"), tokenizer, 0)
    assert str(f) in str(exc.value) and needle in str(exc.value), str(exc.value)


def test_method_config_problems_all_at_once():
    cfg = compose(["method=dpo", "method.beta=0", "method.loss_type=kto", "method.label_smoothing=0.7",
                   "data.packing=true", "init_from=/no/such/run"])
    problems = collect_problems(cfg)
    for needle in ("method.beta=0", "method.loss_type='kto'", "method.label_smoothing=0.7", "data.packing=true",
                   "init_from='/no/such/run'"):
        assert any(needle in p for p in problems), (needle, problems)
    assert collect_problems(compose(["method=dpo"])) == []
    assert cfg.data.train_file.endswith("data/pairs/train.csv")  # method=dpo alone trains on the shipped pairs
    assert any("method.name='kto'" in p for p in collect_problems(compose(["method.name=kto"])))
    assert any("init_from" in p for p in collect_problems(compose(["init_from=/tmp"])))  # not for sft


# ---------------------------------------------------------------- the reference is the frozen start
def flat(pairs: list[tuple[float, float]]) -> list[float]:
    return [x for p in pairs for x in p]


def test_reference_is_the_frozen_start_and_training_moves_only_the_policy(tmp_path, tokenizer):
    from llama2ft.model.lora import apply_lora
    from llama2ft.model.tiny import build_tiny_base
    from llama2ft.training.arguments import training_arguments
    from llama2ft.training.preference import all_pair_logps, preference_trainer_class
    from llama2ft.training.reference import reference_logps
    from transformers import AutoModelForCausalLM

    cfg = compose(["method=dpo", "model.init.hidden_size=64", "model.init.intermediate_size=128",
                   "model.init.num_hidden_layers=1", "trainer.max_steps=6", "trainer.logging_steps=3",
                   "trainer.per_device_train_batch_size=8", "trainer.learning_rate=1e-2"])
    base = build_tiny_base(cfg.model.init, tokenizer, tmp_path / "base")
    model = apply_lora(AutoModelForCausalLM.from_pretrained(base), cfg.lora, 0)
    splits = prepare_pairs(OmegaConf.merge(cfg.data, {"eval_file": None}), get_template("human_assistant"),
                           tokenizer, 0)
    collator = PairCollator(tokenizer.pad_token_id)
    features = as_features(splits.train[:32])
    refs = reference_logps(model, features, collator, 16, torch.device("cpu"))
    with model.disable_adapter():
        frozen = all_pair_logps(model, features, collator, 16)
    assert flat(refs) == pytest.approx(flat([(c, r) for c, r, _, _ in frozen]), abs=1e-5)

    args = training_arguments(cfg.trainer, cfg.logger, tmp_path / "run", False, False)
    args.prediction_loss_only = True
    trainer = preference_trainer_class()(model=model, args=args, train_dataset=as_features(splits.train[:32], refs),
                                         data_collator=collator, method=cfg.method)
    trainer.train()
    with model.disable_adapter():  # the reference, recomputed after training: it has not moved
        after_frozen = all_pair_logps(model, features, collator, 16)
    assert flat([(c, r) for c, r, _, _ in after_frozen]) == pytest.approx(flat(refs), abs=1e-5)
    policy = all_pair_logps(model, features, collator, 16)
    margin = sum((c - rc) - (r - rr) for (c, r, _, _), (rc, rr) in zip(policy, refs)) / len(refs)
    assert margin > 0  # the policy moved, towards the chosen answers
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert logged and {"rewards/chosen", "rewards/rejected", "rewards/accuracies"} <= set(logged[-1])


def test_cli_bad_pairs_file_fails_before_any_model(tmp_path):
    from conftest import run_cli

    bad = tmp_path / "pairs.csv"
    bad.write_text(HEADER + "q,a,b\nq2,十七,十七\n", encoding="utf-8")
    res = run_cli("train", "method=dpo", f"data.train_file={bad}", f"hydra.run.dir={tmp_path / 'run'}",
                  env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad} row 2: chosen and rejected are the same text: the pair prefers nothing"]
    assert not list(tmp_path.glob("tiny-sft-*"))  # the embedded SFT model was not started
