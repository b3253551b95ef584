"""The data step on its Arrow path: preview.jsonl shows the first rows' tokens, the splits are
memory-mapped Arrow files, held-out rows are chosen as before, and packed batches give the same loss
and gradients as unpacked ones."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import compose, run_app
from llama2ft import PROJECT_ROOT
from llama2ft.data.collators import PackedCollator, PadCollator
from llama2ft.data.csv_reader import read_column
from llama2ft.data.packing import pack_columns
from llama2ft.data.dialogue import parse_dialogue
from llama2ft.data.pipeline import prepare_data
from llama2ft.data.templates import IGNORE_INDEX, encode_dialogue, get_template

pytestmark = pytest.mark.usefixtures("app_threads")  # conftest: torch threads as run_app gives commands

SAMPLE = PROJECT_ROOT / "data" / "sample"


def prepared(tokenizer, *overrides, cache_dir):
    cfg = compose(["data=csv", f"data.cache_dir={cache_dir}", *overrides])
    return prepare_data(cfg.data, get_template(cfg.template.name, cfg.template.system), tokenizer, cfg.trainer.seed)


def test_prepare_writes_the_preview_and_shows_what_is_learned(tmp_path, tokenizer):
    res = run_app("prepare", f"hydra.run.dir={tmp_path}/run", "data.preview_rows=3")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "run" / "preview.jsonl").read_text().splitlines()]
    assert [(p["split"], p["row"]) for p in lines] == [("train", 1), ("train", 2), ("train", 3),
                                                       ("eval", 1), ("eval", 2), ("eval", 3)]
    template = get_template("human_assistant")
    for p in lines:
        path = SAMPLE / ("train.csv" if p["split"] == "train" else "dev.csv")
        cell = dict(read_column(path))[p["row"]]
        enc = encode_dialogue(template, tokenizer, parse_dialogue(cell))
        assert (p["input_ids"], p["labels"]) == (enc.input_ids, enc.labels)
    first = dict(read_column(SAMPLE / "train.csv"))[1]
    question, answer = (t.text for t in parse_dialogue(first))
    assert f"<s>Human: {question}\n</s><s>Assistant:⟦ {answer}\n</s>⟧" in res.stdout


def test_no_held_out_split_puts_every_row_in_train(tmp_path, tokenizer):
    data = prepared(tokenizer, f"data.train_file={SAMPLE / 'dev.csv'}", "data.eval_fraction=0", "data.preview_rows=100",
                    cache_dir=tmp_path / "cache")
    assert data.eval is None and data.train.num_rows == 60
    assert [p["row"] for p in data.preview] == list(range(1, 61)) and {p["split"] for p in data.preview} == {"train"}


def test_splits_are_memory_mapped_and_reused(tmp_path, tokenizer, capsys):
    first = prepared(tokenizer, f"data.train_file={SAMPLE / 'train.csv'}", "data.eval_fraction=0.05",
                     cache_dir=tmp_path / "cache")
    assert first.train.cache_files and first.eval.cache_files  # Arrow files on disk, not Python lists
    assert first.train.num_rows + first.eval.num_rows == 2000 and first.eval.num_rows == 100
    assert first.train.column_names == ["input_ids", "labels", "length"]
    assert first.train[0]["length"] == len(first.train[0]["input_ids"])
    again = prepared(tokenizer, f"data.train_file={SAMPLE / 'train.csv'}", "data.eval_fraction=0.05",
                     cache_dir=tmp_path / "cache")
    assert "reusing the cached preprocessing" in capsys.readouterr().out
    assert again.train[:]["input_ids"] == first.train[:]["input_ids"] and again.stats == first.stats
    assert len(again.examples) == 100


def tiny_lora_model():
    """A small Llama with LoRA, prepared as the training recipe prepares its model (no KV cache: with
    one, transformers would not look for packed rows in the position ids)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama2ft.model.lora import prepare_for_training

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = prepare_for_training(LlamaForCausalLM(config), quantized=False, gradient_checkpointing=False)
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                            init_lora_weights=False))


def summed_loss_and_grads(model, batches):
    """Summed per-token loss over all batches, fed to the model as the Trainer does (`model(**batch)`)."""
    model.zero_grad()
    total = torch.zeros(())
    for batch in batches:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        labels = batch["labels"][:, 1:]
        total = total + torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                          labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                                          reduction="sum")
    total.backward()
    return total.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("extra", [[], ["data.train_on_inputs=true"], ["data.format=raw"]],
                         ids=["answers", "train_on_inputs", "raw"])
def test_packed_arrow_batches_equal_unpacked(tmp_path, tokenizer, extra):
    rows = tmp_path / "rows.csv"
    with rows.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *([cell] for _, cell in read_column(SAMPLE / "dev.csv")[:24])])
    common = [f"data.train_file={rows}", "data.eval_fraction=0", "data.max_seq_len=96", *extra]
    unpacked = prepared(tokenizer, *common, cache_dir=tmp_path / "cache")
    packed = prepared(tokenizer, *common, "data.packing=true", cache_dir=tmp_path / "cache")
    assert packed.train.num_rows < unpacked.train.num_rows and packed.stats["packed_rows"] == packed.train.num_rows
    # the streaming packer writes exactly what packing the same samples in memory gives
    assert packed.train[:] == pack_columns(unpacked.train["input_ids"], unpacked.train["labels"], 96)
    assert sum(map(len, packed.train["input_ids"])) == sum(map(len, unpacked.train["input_ids"]))
    pad = tokenizer.pad_token_id
    packed_batches = [PackedCollator(pad)([packed.train[i] for i in range(s, min(s + 4, packed.train.num_rows))])
                      for s in range(0, packed.train.num_rows, 4)]
    assert all("attention_mask" not in b for b in packed_batches)  # a mask would let packed samples mix
    plain_batches = [PadCollator(pad)([unpacked.train[i] for i in range(s, min(s + 4, unpacked.train.num_rows))])
                     for s in range(0, unpacked.train.num_rows, 4)]
    # packing masks the first label of each sample (nothing precedes it in its own row): do the same unpacked
    for b in plain_batches:
        b["labels"][:, 0] = IGNORE_INDEX
    model = tiny_lora_model()
    loss_packed, grads_packed = summed_loss_and_grads(model, packed_batches)
    loss_plain, grads_plain = summed_loss_and_grads(model, plain_batches)
    assert loss_packed == pytest.approx(loss_plain, rel=1e-5)
    for name, grad in grads_plain.items():
        assert torch.allclose(grads_packed[name], grad, atol=1e-5, rtol=1e-4), name
