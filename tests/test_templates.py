"""Token-level checks of the templates, on the embedded tokenizer and on the real Llama-2 one: the
training ids are the tokenizer's own tokenization of the community text (one BOS/EOS per turn, no
doubled `▁`), exactly the answers with their closing text and EOS are trained, decoding gives back the
text, and what chat feeds the model is the training ids up to the answer's first trained token."""
from __future__ import annotations

import pytest

from conftest import shared_file
from llama2ft.data.csv_reader import read_column
from llama2ft.data.dialogue import Turn, format_dialogue, parse_dialogue
from llama2ft.data.templates import (IGNORE_INDEX, decode_text, encode_dialogue, encode_prompt, encode_raw,
                                     get_template)
from llama2ft.inference.engine import ChatModel

MULTI = ("<s>Human: 1 加 1 等于几？\n</s><s>Assistant: 二\n</s>"
         "<s>Human: 再加 3 呢？\n</s><s>Assistant: 五\n</s>")
# Answers that start with what Llama's `▁` stands alone before (Chinese, digits, CJK punctuation, emoji)
# and with what it joins (a Latin word), multi-line answers and inner/trailing spaces.
HAND_WRITTEN = [
    [("human", "用一句话描述地球。"), ("assistant", "因为地球是唯一已知存在生命的行星。")],
    [("human", "1 加 1 等于几？"), ("assistant", "2，也就是二。"), ("human", "再加 3 呢？"), ("assistant", "5")],
    [("human", "推荐一本书"), ("assistant", "《三体》是刘慈欣的科幻小说。")],
    [("human", "笑一个"), ("assistant", "😀 好的！")],
    [("human", "Say hello"), ("assistant", "Hello, 你好！"), ("human", "And in French?"), ("assistant", "Bonjour")],
    [("human", "写一首两行诗"), ("assistant", "床前明月光，\n疑是地上霜。")],
    [("human", "Python 里怎么打印？"), ("assistant", "用 print(\"你好\")  函数   即可 ")],
    [("human", "第一题"), ("assistant", "答案一"), ("human", "  前后有空格的问题  "), ("assistant", "   回答")],
]
# The Llama-2-chat chat template (tokenizer_config.json of meta-llama/Llama-2-*-chat-hf), the reference
# for llama2_inst.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def turns_of(pairs) -> list[Turn]:
    return [Turn(role, text) for role, text in pairs]


def tokens(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def answer_starts(labels: list[int]) -> list[int]:
    """Index of the first trained token of each answer."""
    return [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]


def assert_prefix_property(template, tok, turns: list[Turn], ids: list[int], labels: list[int]) -> None:
    """For every answer k: what the generation core feeds the model = the training ids up to the first
    trained token of answer k."""
    chat = ChatModel(None, tok, template, 10**9, "prefix-check")
    answers = [k for k, t in enumerate(turns) if t.role == "assistant"]
    starts = answer_starts(labels)
    assert len(starts) == len(answers)
    for k, start in zip(answers, starts):
        if turns[k - 1].text.strip():
            fed, dropped, _ = chat.prompt_ids(turns[:k], max_new_tokens=1)
            assert dropped == 0
        else:  # chat refuses an empty message; a training row may hold one (ShareGPT does)
            fed = encode_prompt(template, tok, turns[:k])
        assert fed == ids[:start], (k, tok.convert_ids_to_tokens(ids[start - 3:start + 2]))


# ---------------------------------------------------------------- community format
@pytest.mark.parametrize("pairs", HAND_WRITTEN, ids=lambda p: p[1][1][:6])
def test_human_assistant_is_the_tokenizers_own_tokenization(any_tokenizer, pairs):
    tok, template = any_tokenizer, get_template("human_assistant")
    turns = turns_of(pairs)
    cell = format_dialogue(turns)
    enc = encode_dialogue(template, tok, turns)
    assert enc.input_ids == tokens(tok, cell)
    assert decode_text(tok, enc.input_ids) == cell  # no doubled space after "Assistant:"
    # trained: exactly each answer (with the space after the colon), its newline and EOS
    marked = decode_text(tok, enc.input_ids, enc.labels, ("⟦", "⟧"))
    assert [part.split("⟧")[0] for part in marked.split("⟦")[1:]] == \
        [f" {t.text}\n{tok.eos_token}" for t in turns if t.role == "assistant"]
    assert_prefix_property(template, tok, turns, enc.input_ids, enc.labels)


def test_latin_answers_keep_llamas_joined_piece(real_tokenizer):
    """The policy for an answer that starts with a Latin word: the space joins it (`▁Hello`), as in the
    community's tokenization; the prompt stops at the colon, so it is the training prefix all the same."""
    tok, template = real_tokenizer, get_template("human_assistant")
    turns = turns_of([("human", "Say hello"), ("assistant", "Hello")])
    enc = encode_dialogue(template, tok, turns)
    start = answer_starts(enc.labels)[0]
    assert tok.convert_ids_to_tokens(enc.input_ids[start - 2:start + 1]) == ["▁Assistant", ":", "▁Hello"]
    chinese = encode_dialogue(template, tok, turns_of([("human", "你好"), ("assistant", "因为")]))
    start = answer_starts(chinese.labels)[0]
    assert tok.convert_ids_to_tokens(chinese.input_ids[start - 2:start + 2]) == ["▁Assistant", ":", "▁", "因"]


@pytest.mark.parametrize("name", ["dev_sft.csv", "dev_sft_sharegpt.csv"])
def test_every_real_row_is_token_exact_with_the_prefix_property(real_tokenizer, name):
    """Every row of the community's files (multi-turn ShareGPT rows: every turn of them)."""
    tok, template = real_tokenizer, get_template("human_assistant")
    for row, cell in read_column(shared_file(name)):
        turns = parse_dialogue(cell)
        enc = encode_dialogue(template, tok, turns)
        assert enc.input_ids == tokens(tok, cell), f"row {row}"
        assert decode_text(tok, enc.input_ids) == cell, f"row {row}"
        trained = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]
        assert trained.count(tok.eos_token_id) == sum(t.role == "assistant" for t in turns)
        assert_prefix_property(template, tok, turns, enc.input_ids, enc.labels)


@pytest.mark.parametrize("name", ["human_assistant", "llama2_inst"])
def test_one_bos_and_eos_per_turn(any_tokenizer, name):
    tok = any_tokenizer
    enc = encode_dialogue(get_template(name, "请用中文回答。"), tok, parse_dialogue(MULTI))
    bos, eos = tok.bos_token_id, tok.eos_token_id
    per_turn = 4 if name == "human_assistant" else 2  # Llama-2 chat: one <s>[INST] q [/INST] a </s> per exchange
    assert enc.input_ids.count(bos) == per_turn and enc.input_ids.count(eos) == per_turn
    assert enc.input_ids[0] == bos and enc.input_ids[1] != bos  # no double BOS
    assert len(enc.input_ids) == len(enc.labels)


def test_train_on_inputs_trains_everything(any_tokenizer):
    enc = encode_dialogue(get_template("human_assistant"), any_tokenizer, parse_dialogue(MULTI), train_on_inputs=True)
    assert enc.labels == enc.input_ids


def test_raw_trains_all_tokens(any_tokenizer):
    tok = any_tokenizer
    enc = encode_raw(tok, "长城很长。")
    assert enc.input_ids == [tok.bos_token_id, *tokens(tok, "长城很长。"), tok.eos_token_id]
    assert enc.labels == enc.input_ids


# ---------------------------------------------------------------- Llama-2 chat
@pytest.mark.parametrize("system", [None, "你是一个乐于助人的助手。请用中文回答。"])
def test_llama2_inst_equals_the_llama2_chat_template(real_tokenizer, system):
    tok = real_tokenizer
    template = get_template("llama2_inst", system)
    for pairs in HAND_WRITTEN:
        turns = turns_of(pairs)
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user" if t.role == "human" else "assistant", "content": t.text} for t in turns]
        reference = tok.apply_chat_template(messages, tokenize=False, chat_template=LLAMA2_CHAT_TEMPLATE)
        enc = encode_dialogue(template, tok, turns)
        assert enc.input_ids == tokens(tok, reference)
        marked = decode_text(tok, enc.input_ids, enc.labels, ("⟦", "⟧"))
        assert [part.split("⟧")[0] for part in marked.split("⟦")[1:]] == \
            [f" {t.text.strip()} {tok.eos_token}" for t in turns if t.role == "assistant"]
        assert_prefix_property(template, tok, turns, enc.input_ids, enc.labels)


def test_llama2_inst_renders_system_once(any_tokenizer):
    template = get_template("llama2_inst", "请用中文回答。")
    turns = [Turn("human", "你好"), Turn("assistant", "你好！"), Turn("human", "再见")]
    text = decode_text(any_tokenizer, encode_prompt(template, any_tokenizer, turns))
    assert text.count("<<SYS>>") == 1 and text.count("[INST]") == 2 and text.endswith("[/INST]")


# ---------------------------------------------------------------- the model's own chat template
@pytest.fixture
def chat_tokenizer(real_tokenizer):
    import copy

    tok = copy.deepcopy(real_tokenizer)
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    return tok


@pytest.mark.parametrize("system", [None, "请用中文回答。"])
def test_chat_template_masks_come_from_the_answer_spans(chat_tokenizer, system):
    """template=chat_template renders with the tokenizer's own template: with Llama-2's, it gives the
    ids and labels of llama2_inst."""
    tok = chat_tokenizer
    for pairs in HAND_WRITTEN:
        turns = turns_of(pairs)
        own = encode_dialogue(get_template("chat_template", system), tok, turns)
        inst = encode_dialogue(get_template("llama2_inst", system), tok, turns)
        assert own.input_ids == inst.input_ids and own.labels == inst.labels
        assert_prefix_property(get_template("chat_template", system), tok, turns, own.input_ids, own.labels)


def test_chat_template_needs_one(real_tokenizer):
    from llama2ft.core.errors import UserError

    with pytest.raises(UserError, match="no chat_template"):
        encode_dialogue(get_template("chat_template"), real_tokenizer, parse_dialogue(MULTI))


def test_prompt_must_end_with_a_question(tokenizer):
    with pytest.raises(ValueError):
        encode_prompt(get_template("human_assistant"), tokenizer, [Turn("human", "a"), Turn("assistant", "b")])


def test_a_saved_tokenizer_tokenizes_as_the_loaded_one(any_tokenizer, tmp_path):
    """Run folders, merged models and extended vocabularies save the tokenizer: transformers 5 drops
    Llama-2's `legacy: true` on save, and the saved copy would tokenize `<s>Human` as `H`, `uman`."""
    from llama2ft.model.loading import open_tokenizer, save_tokenizer

    save_tokenizer(any_tokenizer, tmp_path / "tok")
    again = open_tokenizer(str(tmp_path / "tok"))
    template = get_template("human_assistant")
    for pairs in HAND_WRITTEN:
        turns = turns_of(pairs)
        assert encode_dialogue(template, again, turns) == encode_dialogue(template, any_tokenizer, turns)
        assert encode_prompt(template, again, turns[:1]) == encode_prompt(template, any_tokenizer, turns[:1])


@pytest.mark.parametrize("name", ["dev_sft.csv", "dev_sft_sharegpt.csv"])
def test_cells_render_as_their_parsed_turns(any_tokenizer, name):
    """The data step renders a canonical cell without parsing it: the same text and spans."""
    for template in (get_template("human_assistant"), get_template("llama2_inst", "请用中文回答。")):
        for row, cell in read_column(shared_file(name)):
            assert template.render_cell(cell, any_tokenizer) == template.render(parse_dialogue(cell), any_tokenizer)
    for pairs in HAND_WRITTEN:
        cell = format_dialogue(turns_of(pairs))
        assert get_template("human_assistant").render_cell(cell, any_tokenizer) == \
            get_template("human_assistant").render(turns_of(pairs), any_tokenizer)
