"""loss_on_csv against a loss computed by hand, one unpadded dialogue at a time."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from llama2ft.data.dialogue import Turn, format_dialogue
from llama2ft.core.errors import DataError
from llama2ft.evaluation.loss import loss_on_csv
from llama2ft.data.templates import IGNORE_INDEX, get_template

DIALOGUES = [
    [Turn("human", "请用中文写出数字 407。"), Turn("assistant", "四百零七")],
    [Turn("human", "把“四千零四十六”写成阿拉伯数字。"), Turn("assistant", "4046")],
    [Turn("human", "你好"), Turn("assistant", "你好！有什么可以帮你的吗？我可以把数字写成中文。"),
     Turn("human", "请把 25 逐位写成中文。"), Turn("assistant", "二五")],
    [Turn("human", "数字 9 的中文读法是什么？"), Turn("assistant", "九")],
]


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def _by_hand(model, tok, template, dialogues, max_seq_len: int) -> tuple[list[float], list[int]]:
    """Per dialogue: the summed loss of its answer tokens (answer text + EOS, not the prompt) that fit
    in max_seq_len, and their number; each dialogue alone, without padding."""
    from llama2ft.data.templates import encode_dialogue

    sums, counts = [], []
    for turns in dialogues:
        enc = encode_dialogue(template, tok, turns)
        ids = enc.input_ids[:max_seq_len]
        answer_positions = [i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX]
        positions = [p for p in answer_positions if p < max_seq_len]
        if not positions:
            continue
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        sums.append(-sum(logp[p - 1, ids[p]].item() for p in positions))
        counts.append(len(positions))
    return sums, counts


@pytest.mark.parametrize("template", [get_template("human_assistant"), get_template("llama2_inst", "请用中文回答。")],
                         ids=["human_assistant", "llama2_inst"])
def test_token_mean_loss_matches_hand_computation(model, tokenizer, template):
    sums, counts = _by_hand(model, tokenizer, template, DIALOGUES, 10_000)
    expected = sum(sums) / sum(counts)
    row_means = sum(s / c for s, c in zip(sums, counts)) / len(sums)
    assert abs(row_means - expected) > 1e-3  # so a mean of per-row (or per-batch) means would fail
    for batch_size in (1, 2, 3):
        result = loss_on_csv(model, tokenizer, template, DIALOGUES, max_seq_len=10_000, batch_size=batch_size)
        assert result["loss"] == pytest.approx(expected, rel=1e-5)
        assert result["tokens"] == sum(counts)
        assert result["rows"] == len(DIALOGUES)
        assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_truncation_as_in_training(model, tokenizer):
    template = get_template("human_assistant")
    # At 24 tokens the first, third and fourth answers are cut short (the third dialogue loses its
    # second answer) and the second dialogue, whose answer (its leading space) is token 25, is dropped.
    sums, counts = _by_hand(model, tokenizer, template, DIALOGUES, 24)
    assert counts == [4, 15, 3]
    result = loss_on_csv(model, tokenizer, template, DIALOGUES, max_seq_len=24, batch_size=4)
    assert result["tokens"] == 22 and result["rows"] == 3
    assert result["loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    with pytest.raises(DataError, match="no row has an answer token within max_seq_len=3"):
        loss_on_csv(model, tokenizer, template, DIALOGUES, max_seq_len=3, batch_size=4)


def test_csv_path_and_strings_give_the_same_loss(model, tokenizer, tmp_path):
    path = tmp_path / "dev.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], *([format_dialogue(d)] for d in DIALOGUES)])
    template = get_template("human_assistant")
    from_list = loss_on_csv(model, tokenizer, template, DIALOGUES, 10_000, 2)
    assert loss_on_csv(model, tokenizer, template, str(path), 10_000, 2) == pytest.approx(from_list)
    cells = [format_dialogue(d) for d in DIALOGUES]
    assert loss_on_csv(model, tokenizer, template, cells, 10_000, 2) == pytest.approx(from_list)


def test_bad_rows_are_data_errors(model, tokenizer, tmp_path):
    template = get_template("human_assistant")
    with pytest.raises(DataError, match="dialogue 2: "):
        loss_on_csv(model, tokenizer, template, [format_dialogue(DIALOGUES[0]), "no blocks"], 64, 2)
    path = tmp_path / "bad.csv"
    path.write_text("text\nno blocks here\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.csv row 1"):
        loss_on_csv(model, tokenizer, template, path, 64, 2)


def test_training_mode_is_restored(model, tokenizer):
    model.train()
    try:
        loss_on_csv(model, tokenizer, get_template("human_assistant"), DIALOGUES[:1], 64, 1)
        assert model.training
    finally:
        model.eval()
