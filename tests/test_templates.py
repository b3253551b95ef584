"""Token-level checks of the data step: one BOS/EOS per turn, only answers trained, prompts are
exactly the training tokens up to the answer."""
from __future__ import annotations

import pytest

from conftest import shared_file
from llama2ft.data.csv_reader import read_column
from llama2ft.data.dialogue import Turn, parse_dialogue
from llama2ft.data.templates import IGNORE_INDEX, encode_dialogue, encode_prompt, encode_raw, get_template

ROW = "<s>Human: 你好，请介绍一下长城。\n</s><s>Assistant: 长城是中国古代的军事防御工程。\n</s>"
MULTI = ("<s>Human: 1 加 1 等于几？\n</s><s>Assistant: 二\n</s>"
         "<s>Human: 再加 3 呢？\n</s><s>Assistant: 五\n</s>")


def trained_text(tok, enc) -> str:
    return tok.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])


@pytest.mark.parametrize("name", ["human_assistant", "llama2_inst"])
def test_one_bos_and_eos_per_turn(tokenizer, name):
    turns = parse_dialogue(MULTI)
    enc = encode_dialogue(get_template(name, "请用中文回答。"), tokenizer, turns)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if name == "human_assistant":  # each turn is its own <s>...</s> block
        assert enc.input_ids.count(bos) == 4 and enc.input_ids.count(eos) == 4
    else:  # Llama-2 chat: one <s>[INST] q [/INST] a </s> per exchange
        assert enc.input_ids.count(bos) == 2 and enc.input_ids.count(eos) == 2
    assert enc.input_ids[0] == bos and enc.input_ids[1] != bos  # no double BOS
    assert len(enc.input_ids) == len(enc.labels)


def test_human_assistant_matches_the_community_text(tokenizer):
    turns = parse_dialogue(ROW)
    enc = encode_dialogue(get_template("human_assistant"), tokenizer, turns)
    # decoding with special tokens gives back the csv cell exactly
    assert tokenizer.decode(enc.input_ids, skip_special_tokens=False).replace(" ", "") == ROW.replace(" ", "")
    assert trained_text(tokenizer, enc) == "长城是中国古代的军事防御工程。\n</s>" or \
        trained_text(tokenizer, enc).startswith("长城是中国古代的军事防御工程。")
    # exactly the answer, its newline and the closing EOS are trained
    trained = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[:-1]) == "长城是中国古代的军事防御工程。\n"


def test_multi_turn_masks_every_human_turn(tokenizer):
    enc = encode_dialogue(get_template("human_assistant"), tokenizer, parse_dialogue(MULTI))
    trained = tokenizer.decode([i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX],
                               skip_special_tokens=True)
    assert trained == "二\n五\n"
    assert "加" not in trained and "Human" not in trained and "Assistant" not in trained


def test_train_on_inputs_trains_everything(tokenizer):
    enc = encode_dialogue(get_template("human_assistant"), tokenizer, parse_dialogue(MULTI), train_on_inputs=True)
    assert enc.labels == enc.input_ids


def test_raw_trains_all_tokens(tokenizer):
    enc = encode_raw(tokenizer, "长城很长。")
    assert enc.input_ids[0] == tokenizer.bos_token_id and enc.input_ids[-1] == tokenizer.eos_token_id
    assert enc.labels == enc.input_ids


@pytest.mark.parametrize("name", ["human_assistant", "llama2_inst"])
def test_prompt_is_the_training_prefix(tokenizer, name):
    """What chat feeds the model is exactly the training tokens up to the first answer token."""
    template = get_template(name, "请用中文回答。")
    turns = parse_dialogue(MULTI)
    full = encode_dialogue(template, tokenizer, turns)
    for k in (1, 3):  # answer the first, then the second question with history
        prompt = encode_prompt(template, tokenizer, turns[:k])
        assert full.input_ids[: len(prompt)] == prompt
        assert full.labels[len(prompt)] != IGNORE_INDEX  # the next token is the answer's first
        assert all(lab == IGNORE_INDEX for lab in full.labels[len(encode_prompt(template, tokenizer, turns[:1])):
                                                              len(prompt)] if k == 1)


def test_llama2_inst_renders_system_once(tokenizer):
    template = get_template("llama2_inst", "请用中文回答。")
    turns = [Turn("human", "你好"), Turn("assistant", "你好！"), Turn("human", "再见")]
    text = tokenizer.decode(encode_prompt(template, tokenizer, turns))
    assert text.count("<<SYS>>") == 1 and text.count("[INST]") == 2 and text.endswith("[/INST]")


def test_prompt_must_end_with_a_question(tokenizer):
    with pytest.raises(ValueError):
        encode_prompt(get_template("human_assistant"), tokenizer, [Turn("human", "a"), Turn("assistant", "b")])


@pytest.mark.parametrize("name", ["dev_sft.csv", "dev_sft_sharegpt.csv"])
def test_real_rows_token_level(tokenizer, name):
    """On the community's own files: one BOS/EOS per turn, only Assistant tokens trained."""
    path = shared_file(name)
    template = get_template("human_assistant")
    for _, cell in read_column(path)[:60]:
        turns = parse_dialogue(cell)
        enc = encode_dialogue(template, tokenizer, turns)
        assert enc.input_ids.count(tokenizer.bos_token_id) == len(turns)
        assert enc.input_ids.count(tokenizer.eos_token_id) == len(turns)
        trained = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
        answers = [t for t in turns if t.role == "assistant"]
        assert trained.count(tokenizer.eos_token_id) == len(answers)
        assert tokenizer.decode(trained, skip_special_tokens=True) == "".join(a.text + "\n" for a in answers)
        # the community script's bug: a second BOS in front of the literal <s>
        assert all(not (a == b == tokenizer.bos_token_id) for a, b in zip(enc.input_ids, enc.input_ids[1:]))
