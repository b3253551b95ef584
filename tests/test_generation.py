"""The generation core: the prompt chat feeds the model is the training tokenization up to the answer
(both templates, through the terminal, web and API paths), history trimming, stopping, streaming,
seeds and the sampling checks. A scripted model records what it is fed; no training needed."""
from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest
import torch

from conftest import compose
from llama2ft.data.encode import encode_rows
from llama2ft.data.rows import read_rows
from llama2ft.data.dialogue import Turn
from llama2ft.core.errors import UserError
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.messages import to_turns
from llama2ft.inference.sampling import Sampling
from llama2ft.data.templates import IGNORE_INDEX, get_template

CONVERSATION = [Turn("human", "你好，请介绍一下自己。"), Turn("assistant", "我是一个助手。"),
                Turn("human", "数字 680 的中文读法是什么？")]
ANSWER = "六百八十"
SYSTEM = "你是一个乐于助人的助手。请用中文回答。"


class ScriptedModel(torch.nn.Module):
    """Records each prompt it is fed and "generates" the token ids it was given, like generate() would."""

    def __init__(self, script: list[int], delay_s: float = 0.0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script, self.delay_s = script, delay_s
        self.prompts: list[list[int]] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, streamer=None, **kw):
        import time

        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            self.prompts.append([i for i, m in zip(ids, mask) if m])
        new = self.script[:max_new_tokens]
        if streamer is not None:
            streamer.put(input_ids)
            for token in new:
                time.sleep(self.delay_s)
                streamer.put(torch.tensor([token]))
                if token == eos_token_id:
                    break
            streamer.end()
        for ids in input_ids.tolist():
            rows.append(ids + new)
        return torch.tensor(rows)


def scripted_chat(tokenizer, template: str = "human_assistant", answer: str = ANSWER, system=None,
                  context: int = 256, tail: str = "\n", delay_s: float = 0.0) -> ChatModel:
    ids = [*tokenizer(answer + tail, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id,
           *tokenizer("Human: 多余", add_special_tokens=False)["input_ids"]]
    return ChatModel(ScriptedModel(ids, delay_s), tokenizer, get_template(template, system), context, "scripted")


def training_prefix(tmp_path: Path, tokenizer, template: str, system, turns: list[Turn]) -> list[int]:
    """The training tokenization of `turns` + the answer, cut where the answer's labels start."""
    from llama2ft.data.dialogue import format_dialogue

    path = tmp_path / "one.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["text"], [format_dialogue([*turns, Turn("assistant", ANSWER)])]])
    overrides = [f"data.train_file={path}", f"template={template}"]
    cfg = compose(overrides)  # the system prompt lives in the template object below
    cols, _ = encode_rows(read_rows(str(path), cfg.data), get_template(template, system), tokenizer,
                          max_seq_len=cfg.data.max_seq_len)
    ids, labels = cols["input_ids"][0], cols["labels"][0]
    last_answer_start = max(i for i in range(len(labels)) if labels[i] != IGNORE_INDEX and
                            (i == 0 or labels[i - 1] == IGNORE_INDEX))
    return ids[:last_answer_start]


@pytest.mark.parametrize("template,system", [("human_assistant", None), ("llama2_inst", SYSTEM)])
def test_chat_prompt_is_the_training_prefix(tmp_path, tokenizer, template, system):
    chat = scripted_chat(tokenizer, template, system=system, tail="\n" if template == "human_assistant" else " ")
    reply = chat.chat(CONVERSATION, Sampling(do_sample=False))
    assert chat.model.prompts == [training_prefix(tmp_path, tokenizer, template, system, CONVERSATION)]
    assert reply.text == ANSWER
    assert reply.finish_reason == "stop"


@pytest.mark.parametrize("template,system", [("human_assistant", None), ("llama2_inst", SYSTEM)])
def test_web_and_api_feed_the_same_tokens_as_chat(tmp_path, tokenizer, template, system):
    from fastapi.testclient import TestClient

    from llama2ft.serving.api import create_app
    from llama2ft.serving.web_app import respond

    expected = training_prefix(tmp_path, tokenizer, template, system, CONVERSATION)
    chat = scripted_chat(tokenizer, template, system=system)
    history = [{"role": "user", "content": CONVERSATION[0].text},
               {"role": "assistant", "content": [{"type": "text", "text": CONVERSATION[1].text}]}]
    answers = list(respond(chat, Sampling(), CONVERSATION[2].text, history, system or "", 0.0, 0.95, 50, 1.3, 32))
    assert answers[-1] == ANSWER
    assert chat.model.prompts[-1] == expected

    client = TestClient(create_app(chat, Sampling(do_sample=False), "scripted"))
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": CONVERSATION[0].text}, {"role": "assistant", "content": CONVERSATION[1].text},
        {"role": "user", "content": CONVERSATION[2].text}]
    res = client.post("/v1/chat/completions", json={"model": "scripted", "messages": messages})
    assert res.status_code == 200, res.text
    assert res.json()["choices"][0]["message"]["content"] == ANSWER
    assert chat.model.prompts[-1] == expected


def test_the_web_controls_override_the_apps_sampling_and_keep_its_do_sample_and_seed(tokenizer):
    from llama2ft.serving.web_app import respond

    chat = scripted_chat(tokenizer)
    seen = []
    stream = chat.stream
    chat.stream = lambda turns, samp, system=None: seen.append(samp) or stream(turns, samp, system)
    app = Sampling(do_sample=False, seed=5, max_new_tokens=99)
    assert list(respond(chat, app, "数字 680 的中文读法是什么？", [], "", 0.7, 0.9, 20, 1.1, 32))[-1] == ANSWER
    assert seen == [Sampling(temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.1, max_new_tokens=32,
                             do_sample=False, seed=5)]


def test_streamed_pieces_add_up_to_the_answer_without_stop_text(tokenizer):
    chat = scripted_chat(tokenizer, answer="一二三四五六七八九十")
    gen = chat.stream([Turn("human", "数一数")], Sampling(do_sample=False))
    pieces = list(gen)
    assert len(pieces) >= 5  # token by token, not all at once
    assert "".join(pieces) == "一二三四五六七八九十" == gen.reply.text
    assert gen.reply.finish_reason == "stop"
    assert gen.reply.completion_tokens == len(tokenizer("一二三四五六七八九十\n", add_special_tokens=False)["input_ids"])


def test_length_limit_sets_finish_reason(tokenizer):
    chat = scripted_chat(tokenizer, answer="一二三四五六七八九十")
    reply = chat.chat([Turn("human", "数一数")], Sampling(do_sample=False, max_new_tokens=3))
    assert reply.finish_reason == "length"
    assert reply.completion_tokens == 3


def test_oldest_turns_are_dropped_to_fit_the_context(tokenizer):
    turns = []
    for i in range(6):
        turns += [Turn("human", f"第{i}个问题：数字 {i} 的中文读法是什么？"), Turn("assistant", "零一二三四五"[i])]
    turns.append(Turn("human", "数字 7 的中文读法是什么？"))
    chat = scripted_chat(tokenizer, context=96)
    reply = chat.chat(turns, Sampling(do_sample=False, max_new_tokens=16))
    assert reply.dropped_turns > 0 and reply.dropped_turns % 2 == 0  # whole exchanges, oldest first
    fed = chat.model.prompts[-1]
    assert len(fed) + 16 <= 96
    from llama2ft.data.templates import encode_prompt

    assert fed == encode_prompt(chat.template, tokenizer, turns[reply.dropped_turns:])


def test_a_message_longer_than_the_context_is_refused(tokenizer):
    chat = scripted_chat(tokenizer, context=64)
    with pytest.raises(UserError, match="too long"):
        chat.chat([Turn("human", "很长的问题" * 40)], Sampling())
    with pytest.raises(UserError, match="empty"):
        chat.chat([Turn("human", "   ")], Sampling())


def test_requests_never_share_a_stream(tokenizer):
    """Two streams at once: each gets exactly its own answer (the community web chat mixed them)."""
    chat = scripted_chat(tokenizer, answer="一二三四五六七八", delay_s=0.002)
    results: dict[int, list[str]] = {}

    def consume(k: int) -> None:
        results[k] = list(chat.stream([Turn("human", f"问题{k}")], Sampling(do_sample=False)))

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("".join(results[k]) == "一二三四五六七八" for k in range(4))
    assert len(chat.model.prompts) == 4


def test_a_consumer_that_stops_early_cancels_generation(tokenizer):
    chat = scripted_chat(tokenizer, answer="一二三四五六七八九十" * 5, delay_s=0.001)
    gen = chat.stream([Turn("human", "数")], Sampling(do_sample=False))
    for _ in gen:
        break  # CPython closes the abandoned iterator here, as a web server does when a client goes away
    assert gen.reply.finish_reason == "cancelled"
    assert chat.chat([Turn("human", "再数")], Sampling(do_sample=False, max_new_tokens=4)).completion_tokens == 4


def test_seed_makes_sampling_reproducible(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer) + (-len(tokenizer) % 32), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    chat = ChatModel(LlamaForCausalLM(config), tokenizer, get_template("human_assistant"), 128)
    turns = [Turn("human", "你好")]
    hot = dict(temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=24)
    a = chat.chat(turns, Sampling(seed=7, **hot))
    b = chat.chat(turns, Sampling(seed=7, **hot))
    c = chat.chat(turns, Sampling(seed=8, **hot))
    assert a == b
    assert a.text != c.text


def test_sampling_checks_name_every_bad_value():
    problems = Sampling(temperature=-1, top_p=0, top_k=-1, repetition_penalty=0, max_new_tokens=0).problems()
    assert [p.split("=")[0] for p in problems] == ["temperature", "top_p", "top_k", "repetition_penalty",
                                                    "max_new_tokens"]
    assert Sampling().problems() == []
    assert Sampling(temperature=0).generate_kwargs()["do_sample"] is False


def test_messages_become_turns():
    assert to_turns([("user", "a"), ("user", "b"), ("assistant", "c"), ("user", "d")]) == [
        Turn("human", "a\nb"), Turn("assistant", "c"), Turn("human", "d")]
    assert to_turns([("assistant", "hello"), ("user", "q")]) == [Turn("human", "q")]
    with pytest.raises(UserError, match="role"):
        to_turns([("tool", "x")])


def test_stop_texts_end_the_answer_and_are_never_streamed(tokenizer):
    chat = scripted_chat(tokenizer, answer="一二三四五六七八九十")
    gen = chat.stream([Turn("human", "数一数")], Sampling(do_sample=False, stop=("五六", "九")))
    pieces = list(gen)
    assert "".join(pieces) == "一二三四" == gen.reply.text
    assert gen.reply.finish_reason == "stop"
    assert gen.reply.completion_tokens < len(tokenizer("一二三四五六七八九十\n", add_special_tokens=False)["input_ids"])
    batch = chat.chat_batch([[Turn("human", "数一数")]], Sampling(do_sample=False, stop=("七",)))
    assert batch[0].text == "一二三四五六" and batch[0].finish_reason == "stop"
    assert Sampling(stop=("a", "b", "c", "d", "e")).problems() == ["stop: at most 4 non-empty texts"]


def test_api_stop_parameter(tokenizer):
    from fastapi.testclient import TestClient

    from llama2ft.serving.api import create_app

    client = TestClient(create_app(scripted_chat(tokenizer, answer="一二三四五六"), Sampling(do_sample=False), "m"))
    body = {"model": "m", "messages": [{"role": "user", "content": "数"}], "stop": "四"}
    assert client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == "一二三"
    streamed = client.post("/v1/chat/completions", json={**body, "stop": ["三四", "五"], "stream": True}).text
    deltas = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in streamed.splitlines()
              if line.startswith("data: {")]
    assert "".join(d for d in deltas if d) == "一二"
    assert client.post("/v1/chat/completions", json={**body, "stop": [""]}).status_code == 400


def test_free_text_overrides_reach_the_config_unchanged():
    """`prompt=数字 680 是什么？` as a shell gives it: Hydra would reject it unquoted."""
    from llama2ft.config.hydra_app import quote_text_overrides

    texts = ["数字 680 的中文读法是什么？", "it's a \"test\" \\ (ok), [x]: y=1", "a\\'b\\", "'already quoted'"]
    for text in texts:
        overrides = quote_text_overrides([f"prompt={text}", "system=你是助手。", "temperature=0"])
        cfg = compose(overrides, config_name="chat")
        assert cfg.prompt == (text if not text.startswith("'") else "already quoted")
        assert cfg.system == "你是助手。" and cfg.temperature == 0
