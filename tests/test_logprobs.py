"""What the API's scoring stands on, without a server: log-probabilities of the model's own distribution
(batched rows equal each row alone, equal a direct log-softmax), the text each token adds (on the embedded and
the real Llama-2 tokenizer), one BOS on a raw prompt, OpenAI's frequency/presence penalties (by hand, and the
same in the batcher as in transformers' generate), the request fields the API refuses, and the vLLM mapping."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from llama2ft.data.templates import get_template
from llama2ft.inference.decoding import OpenAIPenalties, openai_penalties, scores
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.logprobs import alternative_piece, score_sequences, special_ids, token_pieces
from llama2ft.inference.sampling import Sampling
from test_batching import tiny_model

TEXTS = ["<s>Human: 数字 680 的中文读法是什么？\n</s><s>Assistant: 六百八十\n</s>",
         "Hello world, 你好 😀 𠀀 ok\n\nA. 一千零一\n答案：", "  two spaces, then\ttab"]


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


def test_scores_are_the_models_log_softmax_batched_or_alone(model, tokenizer, app_threads):
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"][:n] for t, n in zip(TEXTS, (40, 25, 12))]
    together = score_sequences(model, rows, top=3, pad_id=tokenizer.pad_token_id)
    alone = [score_sequences(model, [r], top=3, pad_id=0)[0] for r in rows]
    small_passes = score_sequences(model, rows, top=3, pad_id=0, max_tokens=30)  # one row a pass
    for row, got, solo, small in zip(rows, together, alone, small_passes):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([row])).logits[0].float(), -1)
        assert got[0].logprob is None and got[0].top == [] and [s.token for s in got] == row
        for p in range(1, len(row)):
            assert got[p].logprob == pytest.approx(logp[p - 1, row[p]].item(), abs=1e-5)
            assert got[p].logprob == pytest.approx(solo[p].logprob, abs=1e-5)
            assert small[p].logprob == pytest.approx(solo[p].logprob, abs=1e-5)
            best = torch.topk(logp[p - 1], 3)
            assert [t for t, _ in got[p].top] == best.indices.tolist()
            assert [v for _, v in got[p].top] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_each_token_adds_its_text_and_offsets_follow(any_tokenizer):
    for text in TEXTS:
        ids = any_tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = token_pieces(any_tokenizer, ids)
        assert "".join(p.text for p in pieces) == any_tokenizer.decode(ids, skip_special_tokens=True)
        position = 0
        for p in pieces:
            assert p.offset == position
            position += len(p.text)
        assert [p.token for p in pieces if p.special] == [t for t in ("<s>", "</s>", "<s>", "</s>") if t in text]
        # a character split into byte tokens: the parts show as bytes, the last carries the character
        for i, p in enumerate(pieces):
            if p.partial:
                assert p.text == "" and p.token.startswith("bytes:\\x") and len(p.raw) == 1
        chars = [p.text for p in pieces if not p.partial]
        assert "".join(chars) == "".join(p.text for p in pieces)
    rare = token_pieces(any_tokenizer, any_tokenizer("𠀀", add_special_tokens=False)["input_ids"])
    assert "".join(p.text for p in rare) == "𠀀" and b"".join(p.raw for p in rare) == "𠀀".encode()


def test_a_text_prompt_is_cut_into_its_own_text(any_tokenizer):
    """echo returns a text prompt as it was sent (markup, spaces and all), the answer's pieces after it."""
    chat = ChatModel(None, any_tokenizer, get_template("human_assistant"), 512)
    from llama2ft.inference.logprobs import row_pieces

    for prompt in ("Human: 数字 1001 的中文读法是什么？\n</s><s>Assistant: ", "<s>  two spaces 𠀀 ", TEXTS[1]):
        ids = chat.raw_prompt_ids(prompt)
        answer = any_tokenizer("六百八十\n", add_special_tokens=False)["input_ids"]
        pieces = row_pieces(any_tokenizer, ids + answer, len(ids), prompt)
        assert "".join(p.text for p in pieces[: len(ids)]) == prompt
        assert "".join(p.text for p in pieces[len(ids):]).strip() == "六百八十"
        position = 0
        for p in pieces:
            assert p.offset == position
            position += len(p.text)
        assert pieces[0].token == "<s>" and pieces[1].token != "<s>"


def test_an_alternative_token_reads_as_it_would_in_place(any_tokenizer):
    ids = any_tokenizer("Hello world 你好", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(any_tokenizer, ids)
    special = special_ids(any_tokenizer)
    for i in range(1, len(ids)):
        if not pieces[i].partial:
            assert alternative_piece(any_tokenizer, ids[i], ids[i - 1], special).token == pieces[i].token


def test_a_raw_prompt_gets_one_bos(any_tokenizer):
    chat = ChatModel(None, any_tokenizer, get_template("human_assistant"), 512)
    bos = any_tokenizer.bos_token_id
    plain = chat.raw_prompt_ids("Human: 数字 1001 的中文读法是什么？\n</s><s>Assistant: ")
    marked = chat.raw_prompt_ids("<s>Human: 数字 1001 的中文读法是什么？\n</s><s>Assistant: ")
    assert plain[0] == bos and plain[1] != bos and marked == plain
    assert chat.raw_prompt_ids([5, 6, 7]) == [5, 6, 7]  # token ids are taken as they are (as OpenAI, vLLM)
    with pytest.raises(Exception, match="not in the model's vocabulary"):
        chat.raw_prompt_ids([5, 10**7])
    with pytest.raises(Exception, match="context is 512"):
        chat.raw_prompt_ids([5] * 512)


def test_openai_penalties_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    answer = torch.tensor([[2, 2, 3]])
    out = openai_penalties(logits, answer, Sampling(frequency_penalty=0.5, presence_penalty=0.25))
    assert out.tolist() == [[1.0, 2.0, 3.0 - 2 * 0.5 - 0.25, 4.0 - 0.5 - 0.25]]
    row = scores(logits[0], torch.tensor([0, 0, 1, 2, 2, 3]), Sampling(do_sample=False, repetition_penalty=1.0,
                                                                       frequency_penalty=0.5, presence_penalty=0.25),
                 prompt_len=3)  # the prompt's tokens (0, 0, 1) are not penalized, the answer's (2, 2, 3) are
    assert row.tolist() == out.tolist()
    assert Sampling(frequency_penalty=2.5).problems() == ["frequency_penalty=2.5: must be in [-2, 2] (0 turns it off)"]


def test_penalties_give_the_same_answer_batched_as_in_generate(model, tokenizer, app_threads):
    """The batcher (decoding.scores) and transformers' generate (OpenAIPenalties) apply them alike."""
    from llama2ft.data.dialogue import Turn

    samp = Sampling(do_sample=False, max_new_tokens=24, repetition_penalty=1.0, frequency_penalty=1.5,
                    presence_penalty=0.5)
    plain = Sampling(do_sample=False, max_new_tokens=24, repetition_penalty=1.0)
    answers = {}
    for max_batch in (1, 4):
        chat = ChatModel(model, tokenizer, get_template("human_assistant"), 512, max_batch=max_batch)
        answers[max_batch] = [chat.chat([Turn("human", q)], s).text for q in ("你好", "1+1=?") for s in (samp, plain)]
        chat.close()
    assert answers[1] == answers[4]
    assert answers[1][0] != answers[1][1]  # the penalties change greedy answers
    proc = OpenAIPenalties(samp, prompt_width=2)
    ids = torch.tensor([[9, 9, 3, 3], [9, 9, 1, 3]])
    out = proc(ids, torch.zeros(2, 5))
    assert out[0, 3] == -3.5 and out[1, 3] == -2.0 and out[0, 9 % 5] == 0  # prompt columns not counted


def test_refused_fields_are_named():
    from llama2ft.core.errors import UserError
    from llama2ft.serving.api_models import ChatRequest, CompletionRequest, prompt_list, sampling_of

    server = Sampling(do_sample=False)
    msgs = [{"role": "user", "content": "hi"}]
    for body, needle in [
        (ChatRequest(messages=msgs, tools=[{"type": "function"}]), "tools: not supported"),
        (ChatRequest(messages=msgs, response_format={"type": "json_object"}), "response_format"),
        (ChatRequest(messages=msgs, logit_bias={"5": 10}), "logit_bias: not supported"),
        (ChatRequest(messages=msgs, logprobs=True, stream=True), "logprobs: not supported with stream"),
        (ChatRequest(messages=msgs, top_logprobs=2), "top_logprobs: needs logprobs=true"),
        (ChatRequest(messages=msgs, max_tokens=0), "max_tokens=0: must be >= 1"),
        (ChatRequest(messages=msgs, n=9), "n=9: must be in [1, 8]"),
        (CompletionRequest(prompt="x", suffix="y"), "suffix"),
        (CompletionRequest(prompt="x", logprobs=21), "logprobs=21: must be in [0, 20]"),
        (CompletionRequest(prompt="x", echo=True, stream=True), "echo: not supported with stream"),
        (CompletionRequest(prompt="x", max_tokens=0), "max_tokens=0: only with echo=true"),
        (CompletionRequest(prompt="x", best_of=3), "best_of=3"),
        (CompletionRequest(prompt=["a", "b"], stream=True), "only one prompt and n=1"),
    ]:
        with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            sampling_of(body, server)
    zero = sampling_of(CompletionRequest(prompt="x", max_tokens=0, echo=True, logprobs=1), server)
    assert zero.max_new_tokens == 1  # scored only: nothing is generated
    assert sampling_of(ChatRequest(messages=msgs, user="u1", stream_options={"include_usage": True}), server) == server
    assert prompt_list(CompletionRequest(prompt=[1, 2, 3])) == [[1, 2, 3]]
    assert prompt_list(CompletionRequest(prompt=[[1, 2], [3]])) == [[1, 2], [3]]
    assert prompt_list(CompletionRequest(prompt=["a", "b"])) == ["a", "b"]


def test_vllm_gets_the_penalties_and_scores_through_prompt_logprobs(tokenizer):
    """engine=vllm: OpenAI's penalties are vLLM's own; scoring is a request with prompt_logprobs (a stand-in
    engine here: no GPU, no vLLM)."""
    from llama2ft.inference.vllm_engine import VllmChatModel, sampling_args, score_args, scores_of

    args = sampling_args(Sampling(frequency_penalty=0.5, presence_penalty=-1.0), 10, 2)
    assert (args["frequency_penalty"], args["presence_penalty"]) == (0.5, -1.0)
    assert score_args(3) == {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 3, "detokenize": False}

    def logprob(x):
        return types.SimpleNamespace(logprob=x)

    row = [1, 7, 8]
    prompt_logprobs = [None, {7: logprob(-0.5), 9: logprob(-1.5)}, {3: logprob(-0.1), 8: logprob(-4.0)}]
    got = scores_of(prompt_logprobs, row, top=1)
    assert [s.logprob for s in got] == [None, -0.5, -4.0]
    assert [s.top for s in got] == [[], [(7, -0.5)], [(3, -0.1)]]

    class Engine:
        def __init__(self):
            self.params = []

        def add_request(self, rid, prompt, params, lora_request=None):
            self.params.append(params)
            self.rid = rid

        def abort_request(self, rids):
            pass

        def step(self):
            return [types.SimpleNamespace(request_id=self.rid, finished=True, prompt_logprobs=prompt_logprobs,
                                          outputs=[types.SimpleNamespace(token_ids=[2])])]

    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kw: kw
    sys.modules["vllm"] = module
    try:
        engine = Engine()
        chat = VllmChatModel(engine, tokenizer, get_template("human_assistant"), 256, "v", max_batch=4)
        [scored] = chat.score([row], top=1)
        chat.close()
    finally:
        del sys.modules["vllm"]
    assert [s.logprob for s in scored] == [None, -0.5, -4.0]
    assert engine.params[0]["prompt_logprobs"] == 1 and engine.params[0]["max_tokens"] == 1
