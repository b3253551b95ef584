"""Preference rows (pairs for DPO/ORPO/SimPO, completions for KTO) through the same data pipeline as SFT
dialogues: encoded through the SFT templates with only answer tokens scored, every file type, weights and
held-out splits, one clear error per bad file; and a reference that is the frozen start."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose
from llama2ft.core.errors import DataError
from llama2ft.data.dialogue import Turn
from llama2ft.data.pair_encode import COMPLETIONS, PAIRS, CompletionCollator, PairCollator
from llama2ft.data.pairs import iter_pairs
from llama2ft.data.pipeline import prepare_data
from llama2ft.data.templates import IGNORE_INDEX, encode_dialogue, encode_prompt, get_template

HEADER = "prompt,chosen,rejected\n"


def data_node(train, max_seq_len: int = 128, eval_file=None, **more) -> OmegaConf:
    """The default data settings on `train` (a file or a list), uncached unless `more` says otherwise."""
    settings = dict(train_file=train if isinstance(train, list) else str(train), eval_file=eval_file,
                    eval_fraction=0.0, max_seq_len=max_seq_len, cache=False)
    return OmegaConf.merge(compose([]).data, {**settings, **more})


def prepare_pairs(data, template, tok, seed):
    return prepare_data(data, template, tok, seed, PAIRS)


def triples(prepared) -> list[tuple]:
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in prepared.train]


def test_pair_ids_are_the_chat_prompt_and_the_sft_answer(tmp_path, any_tokenizer):
    tok = any_tokenizer
    f = tmp_path / "p.csv"
    dialogue = "<s>Human: 3382 用中文怎么写？\n</s><s>Assistant: 三千三百八十二\n</s><s>Human: 数字 2056 呢？\n</s>"
    f.write_text(HEADER + f'"{dialogue}",两千零五十六,二千零五十六\n请用中文写出数字 17。,十七,一十七\n', encoding="utf-8")
    template = get_template("human_assistant")
    splits = prepare_pairs(data_node(f), template, tok, 0)
    pairs = [item.value for item in iter_pairs(str(f), data_node(f))]
    for pair, (prompt, chosen, rejected) in zip(pairs, triples(splits)):
        turns = list(pair.turns)
        assert prompt == encode_prompt(template, tok, turns)  # what chat/API feed
        for answer, ids in ((pair.chosen, chosen), (pair.rejected, rejected)):
            sft = encode_dialogue(template, tok, [*turns, Turn("assistant", answer)])
            trained = [i for i, lab in zip(sft.input_ids, sft.labels) if lab != IGNORE_INDEX]
            assert ids == trained[-len(ids):] and ids[-1] == tok.eos_token_id  # answer + closing + EOS, as SFT
            assert sft.input_ids == prompt + ids  # one sequence, split where the answer starts
    rows = list(splits.train)
    batch = PairCollator(tok.pad_token_id)(rows)
    for row, enc in enumerate([*rows, *rows]):
        n_prompt = len(enc["prompt_ids"])
        assert (batch["labels"][row, :n_prompt] == IGNORE_INDEX).all()  # prompt tokens are never scored
        answer = enc["chosen_ids"] if row < 2 else enc["rejected_ids"]
        assert batch["labels"][row, n_prompt:n_prompt + len(answer)].tolist() == answer
        assert (batch["labels"][row, n_prompt + len(answer):] == IGNORE_INDEX).all()


def test_pairs_from_jsonl_and_parquet_equal_the_csv(tmp_path, tokenizer):
    import pandas as pd

    rows = [{"prompt": "<s>Human: 3382 用中文怎么写？\n</s><s>Assistant: 三千三百八十二\n</s><s>Human: 数字 2056 呢？\n</s>",
             "chosen": "两千零五十六", "rejected": "二千零五十六"},
            {"prompt": "请用中文写出数字 17。", "chosen": "十七", "rejected": "一十七"}]
    csv, jsonl, parquet = tmp_path / "p.csv", tmp_path / "p.jsonl", tmp_path / "p.parquet"
    pd.DataFrame(rows).to_csv(csv, index=False)
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pd.DataFrame(rows).to_parquet(parquet)
    template = get_template("human_assistant")
    want = triples(prepare_pairs(data_node(csv), template, tokenizer, 0))
    for f in (jsonl, parquet):
        assert triples(prepare_pairs(data_node(f), template, tokenizer, 0)) == want
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


# ---------------------------------------------------------------- pairs like dialogues: weights, splits, cache
def write_pairs(path: Path, n: int, tag: str) -> Path:
    path.write_text(HEADER + "".join(f"请用中文写出数字 {tag}{i}。,对{i},错{i}\n" for i in range(n)), encoding="utf-8")
    return path


def test_pairs_mix_by_weights_hold_out_and_cache_like_dialogues(tmp_path, tokenizer, capsys):
    a, b = write_pairs(tmp_path / "a.csv", 10, "1"), write_pairs(tmp_path / "b.csv", 4, "2")
    template = get_template("human_assistant")
    data = data_node([str(a), str(b)], weights=[1, 2.5], cache=True, cache_dir=str(tmp_path / "cache"))
    prepared = prepare_pairs(data, template, tokenizer, 0)
    assert prepared.stats["pairs"] == 10 + 10  # b's 4 rows x 2.5
    assert [f["rows_per_epoch"] for f in prepared.stats["files"]] == [10, 10]
    prompts = [tokenizer.decode(r["prompt_ids"]) for r in prepared.train]
    assert sum("数字 2" in p for p in prompts) == 10 and sum("数字 1" in p for p in prompts) == 10
    again = prepare_pairs(data, template, tokenizer, 0)  # the same inputs: the cached entry, the same rows
    assert "reusing the cached preprocessing" in capsys.readouterr().out
    assert triples(again) == triples(prepared)
    held = prepare_pairs(data_node(a, eval_fraction=0.3), template, tokenizer, 0)
    assert held.stats["pairs"] == 7 and held.stats["eval"]["pairs"] == 3 and len(held.examples) == 3
    assert {p.chosen for p in held.examples}.isdisjoint(tokenizer.decode(r["chosen_ids"]) for r in held.train)
    assert held.examples[0].rejected.startswith("错")  # kept as text for the greedy answers


def test_cached_stats_name_this_runs_files(tmp_path, tokenizer):
    """The cache is keyed by contents: a run whose files equal another run's (elsewhere) reuses its entry,
    and its data_stats.json still names its own files."""
    cache = str(tmp_path / "cache")
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir(), second.mkdir()
    for folder in (first, second):
        write_pairs(folder / "a.csv", 3, "1"), write_pairs(folder / "b.csv", 3, "2")
    template = get_template("human_assistant")
    for folder in (first, second):
        files = [str(folder / "a.csv"), str(folder / "b.csv")]
        prepared = prepare_pairs(data_node(files, cache=True, cache_dir=cache, preview_rows=5), template, tokenizer, 0)
        assert [f["file"] for f in prepared.stats["files"]] == files
        assert {p["file"] for p in prepared.preview} <= set(files)


# ---------------------------------------------------------------- KTO completions
def test_completions_from_labelled_rows_and_from_pairs(tmp_path, any_tokenizer):
    tok, template = any_tokenizer, get_template("human_assistant")
    rows = [{"prompt": "请用中文写出数字 17。", "completion": "十七", "label": True},
            {"prompt": "请用中文写出数字 18。", "completion": "一十八", "label": False},
            {"prompt": "请用中文写出数字 19。", "completion": "十九", "label": "true"}]
    f = tmp_path / "kto.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    prepared = prepare_data(data_node(f), template, tok, 0, COMPLETIONS)
    assert [r["desirable"] for r in prepared.train] == [True, False, True]
    for row, r in zip(prepared.train, rows):
        assert row["prompt_ids"] == encode_prompt(template, tok, [Turn("human", r["prompt"])])
        assert row["kl_ids"] != row["completion_ids"]  # another row's answer under this prompt
    pairs = write_pairs(tmp_path / "p.csv", 3, "1")  # a pairs file: chosen desirable, rejected undesirable
    from_pairs = prepare_data(data_node(pairs), template, tok, 0, COMPLETIONS)
    assert from_pairs.stats["desirable"] == 3 and from_pairs.stats["undesirable"] == 3
    pair_rows = triples(prepare_pairs(data_node(pairs), template, tok, 0))
    assert [r["completion_ids"] for r in from_pairs.train] == [ids for _, c, r in pair_rows for ids in (c, r)]
    batch = CompletionCollator(tok.pad_token_id)(list(from_pairs.train)[:2])
    assert batch["input_ids"].shape[0] == 4 and batch["desirable"].tolist() == [True, False]


BAD_KTO = {
    "no label column": ("prompt,completion\nq,a\n", "has no column 'label'"),
    "bad label": ("prompt,completion,label\nq,a,true\nq2,b,maybe\n", "row 2: label 'maybe' must be true or false"),
    "empty completion": ("prompt,completion,label\nq,,true\n", "row 1: empty completion answer"),
    "one kind only": ("prompt,completion,label\nq,a,true\nq2,b,1\n", "KTO needs both kinds"),
}


@pytest.mark.parametrize("case", list(BAD_KTO))
def test_bad_kto_file_one_clear_error(tmp_path, tokenizer, case):
    text, needle = BAD_KTO[case]
    f = tmp_path / "kto.csv"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        prepare_data(data_node(f), get_template("human_assistant"), tokenizer, 0, COMPLETIONS)
    assert str(f) in str(exc.value) and needle in str(exc.value), str(exc.value)


# ---------------------------------------------------------------- the reference is the frozen start
def flat(pairs: list[tuple[float, float]]) -> list[float]:
    return [x for p in pairs for x in p]


def test_reference_is_the_frozen_start_and_training_moves_only_the_policy(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from llama2ft.model.lora import apply_lora
    from llama2ft.model.tiny import build_tiny_base
    from llama2ft.training.arguments import training_arguments
    from llama2ft.training.methods import get_method
    from llama2ft.training.preference import all_logps, reference_logps, with_columns

    cfg = compose(["method=dpo", "model.init.hidden_size=64", "model.init.intermediate_size=128",
                   "model.init.num_hidden_layers=1", "trainer.max_steps=6", "trainer.logging_steps=3",
                   "trainer.per_device_train_batch_size=8", "trainer.learning_rate=1e-2"])
    base = build_tiny_base(cfg.model.init, tokenizer, tmp_path / "base")
    model = apply_lora(AutoModelForCausalLM.from_pretrained(base), cfg.lora, 0)
    prepared = prepare_pairs(OmegaConf.merge(cfg.data, {"eval_file": None, "cache": False}),
                             get_template("human_assistant"), tokenizer, 0)
    collator = PairCollator(tokenizer.pad_token_id)
    features = prepared.train.select(range(32))
    refs = reference_logps(model, features, collator, 16, torch.device("cpu"))
    with model.disable_adapter():
        frozen = all_logps(model, features, collator, 16)
    assert flat(refs) == pytest.approx(flat([(c, r) for c, r, _, _ in frozen]), abs=1e-5)

    method = get_method("dpo")
    args = training_arguments(cfg.trainer, cfg.logger, tmp_path / "run", False, False)
    train = with_columns(features, {"ref_chosen": [c for c, _ in refs], "ref_rejected": [r for _, r in refs]})
    trainer = method.trainer_class()(model=model, args=args, train_dataset=train, data_collator=collator,
                                     **method.trainer_kwargs(cfg))
    trainer.train()
    with model.disable_adapter():  # the reference, recomputed after training: it has not moved
        after_frozen = all_logps(model, features, collator, 16)
    assert flat([(c, r) for c, r, _, _ in after_frozen]) == pytest.approx(flat(refs), abs=1e-5)
    policy = all_logps(model, features, collator, 16)
    margin = sum((c - rc) - (r - rr) for (c, r, _, _), (rc, rr) in zip(policy, refs)) / len(refs)
    assert margin > 0  # the policy moved, towards the chosen answers
    logged = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert logged and {"rewards/chosen", "rewards/rejected", "rewards/accuracies"} <= set(logged[-1])


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_bad_pairs_file_fails_before_any_model(tmp_path, method):
    from conftest import run_app

    bad = tmp_path / "pairs.csv"
    bad.write_text(HEADER + "q,a,b\nq2,十七,十七\n", encoding="utf-8")
    res = run_app("train", f"method={method}", f"data.train_file={bad}", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad} row 2: chosen and rejected are the same text: the pair prefers nothing"]
    assert not list(tmp_path.glob("tiny-sft-*"))  # the embedded SFT model was not started


def test_a_prompts_file_for_a_reward_model_is_one_clear_error(tmp_path):
    from conftest import run_app

    bad = tmp_path / "prompts.csv"
    bad.write_text("prompt\n请用中文写出数字 244。\n", encoding="utf-8")
    res = run_app("train", "method=rm", f"data.train_file={bad}", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad} has no column 'chosen', 'rejected'; columns found: 'prompt'"]
    assert not list(tmp_path.glob("tiny-sft-*"))  # before the embedded SFT model


def test_reward_model_settings_are_checked():
    from llama2ft.training.methods.rm import RewardModeling

    cfg = compose(["method=rm", "method.center_rewards_coefficient=-1", "data.packing=true"])
    assert RewardModeling().problems(cfg) == [
        "data.packing=true with method=rm: preference rows are not packed; set data.packing=false",
        "method.center_rewards_coefficient=-1.0: must be >= 0 (or null: off)"]
