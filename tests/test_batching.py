"""Continuous batching in the generation core (inference/batching.py): answers in a batch equal the answers
alone (greedy), streams never mix, a cancelled request frees its place, each request keeps its own
sampling settings and seed, max_batch and max_queue hold. A small random Llama in float32 stands in for a
trained one: its answers are arbitrary but deterministic, which is all these promises need."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from llama2ft.data.dialogue import Turn
from llama2ft.data.templates import get_template
from llama2ft.inference.decoding import scores
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.request import QueueFull
from llama2ft.inference.sampling import Sampling

QUESTIONS = ["你好", "数字 680 的中文读法是什么？", "请介绍一下你自己，并用中文写一首关于春天的短诗。", "1+1=?",
             "What is the capital of France? Answer briefly.", "翻译：I love you"]


def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer)
    config = LlamaConfig(vocab_size=vocab + (-vocab % 32), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)  # peaked attention:
    torch.manual_seed(0)  # a token's position matters, as in a trained model
    model = LlamaForCausalLM(config).eval()
    # No EOS, specials or bytes: every answer runs to its max_new_tokens, so requests overlap as planned.
    model.generation_config.suppress_tokens = [*range(259), *range(vocab, config.vocab_size)]
    return model


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


def chat_on(model, tokenizer, max_batch: int, max_queue=None) -> ChatModel:
    return ChatModel(model, tokenizer, get_template("human_assistant"), 512, "tiny", max_queue=max_queue,
                     max_batch=max_batch)


def greedy(n: int) -> Sampling:
    return Sampling(do_sample=False, max_new_tokens=n)


def solo_answers(model, tokenizer, requests: list[tuple[str, Sampling]]) -> list[str]:
    """Each request alone through the one-at-a-time path (transformers' generate)."""
    chat = chat_on(model, tokenizer, max_batch=1)
    try:
        return [chat.chat([Turn("human", q)], s).text for q, s in requests]
    finally:
        chat.close()


def batched(chat: ChatModel, requests: list[tuple[str, Sampling]]) -> list[str]:
    gens = [chat.stream([Turn("human", q)], s) for q, s in requests]
    for g in gens:
        g.start()
    return [g.run().text for g in gens]


@pytest.mark.parametrize("tok", ["embedded", "llama2"])
def test_greedy_answers_in_a_batch_equal_the_answers_alone(request, tok):
    tokenizer = request.getfixturevalue("tokenizer" if tok == "embedded" else "real_tokenizer")
    model = tiny_model(tokenizer)
    # prompts of different lengths (left padding) and lengths of answer (rows leave and join mid-flight)
    requests = [(q, greedy(n)) for q, n in zip(QUESTIONS, [24, 6, 17, 30, 9, 12])]
    chat = chat_on(model, tokenizer, max_batch=4)
    together = batched(chat, requests)
    assert chat._batcher.most == 4  # they really ran together
    chat.close()
    assert together == solo_answers(model, tokenizer, requests)
    assert all(together)


def test_two_concurrent_streams_never_get_each_others_tokens(model, tokenizer):
    requests = [(QUESTIONS[1], greedy(24)), (QUESTIONS[2], greedy(24))]
    alone = solo_answers(model, tokenizer, requests)
    assert alone[0] != alone[1]
    chat = chat_on(model, tokenizer, max_batch=2)
    gens = [chat.stream([Turn("human", q)], s) for q, s in requests]
    streamed: list[list[str]] = [[], []]

    def read(i: int) -> None:
        for piece in gens[i]:
            streamed[i].append(piece)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert ["".join(p) for p in streamed] == alone
    assert all(len(p) > 1 for p in streamed)  # streamed piece by piece, not at the end
    assert chat._batcher.most == 2
    chat.close()


def test_a_cancelled_stream_frees_its_place_and_the_others_go_on(model, tokenizer):
    long_, short = greedy(60), greedy(4)
    alone = solo_answers(model, tokenizer, [(QUESTIONS[1], long_), (QUESTIONS[3], short)])
    chat = chat_on(model, tokenizer, max_batch=2)
    quitter = chat.stream([Turn("human", QUESTIONS[0])], long_)
    stayer = chat.stream([Turn("human", QUESTIONS[1])], long_)
    waiter = chat.stream([Turn("human", QUESTIONS[3])], short)  # no place until one of the two leaves
    for g in (quitter, stayer, waiter):
        g.start()
    pieces = iter(quitter)
    next(pieces)
    pieces.close()  # the client went away after its first piece
    finished: dict[str, float] = {}

    def run(name, gen) -> None:
        gen.run()
        finished[name] = time.monotonic()

    threads = [threading.Thread(target=run, args=(n, g)) for n, g in (("stayer", stayer), ("waiter", waiter))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert quitter.reply.finish_reason == "cancelled" and quitter.reply.completion_tokens < 60
    assert finished["waiter"] < finished["stayer"]  # it took the freed place while the long one still ran
    assert [stayer.reply.text, waiter.reply.text] == alone
    assert stayer.reply.finish_reason == waiter.reply.finish_reason == "length"
    chat.close()


def test_each_request_keeps_its_sampling_settings_and_seed(model, tokenizer):
    seeded = Sampling(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16, seed=7)
    other_seed = Sampling(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16, seed=8)
    top1 = Sampling(temperature=1.5, top_k=1, max_new_tokens=16, seed=3)  # top_k=1 leaves the greedy token only
    requests = [(QUESTIONS[0], seeded), (QUESTIONS[0], other_seed), (QUESTIONS[0], top1), (QUESTIONS[2], greedy(16))]
    chat = chat_on(model, tokenizer, max_batch=4)
    first = batched(chat, requests)
    again = batched(chat, [requests[0], requests[3]])  # the same seed with other neighbours: the same answer
    alone = batched(chat, [requests[0]])
    chat.close()
    assert first[0] == again[0] == alone[0]
    assert first[1] != first[0]  # another seed samples another answer
    assert first[2] == solo_answers(model, tokenizer, [(QUESTIONS[0], greedy(16))])[0]
    assert first[3] == again[1] == solo_answers(model, tokenizer, [requests[3]])[0]


def test_max_batch_bounds_the_batch(model, tokenizer):
    requests = [(q, greedy(8)) for q in QUESTIONS[:5]]
    chat = chat_on(model, tokenizer, max_batch=2)
    assert batched(chat, requests) == solo_answers(model, tokenizer, requests)
    assert chat._batcher.most == 2
    chat.close()


def test_max_queue_counts_the_requests_waiting_for_a_place(model, tokenizer):
    chat = chat_on(model, tokenizer, max_batch=2, max_queue=1)
    gens = [chat.stream([Turn("human", q)], greedy(40)) for q in QUESTIONS[:4]]
    for i, running in ((0, 1), (1, 2)):  # one at a time: the first may still wait while the second comes
        gens[i].start()
        deadline = time.time() + 10
        while len(chat._batcher._rows) < running and time.time() < deadline:
            time.sleep(0.005)
    gens[2].start()  # both places taken: it waits
    with pytest.raises(QueueFull) as info:
        gens[3].start()
    assert info.value.retry_after >= 1
    assert all(g.run().finish_reason == "length" for g in gens[:3])
    chat.close()


def test_a_vanishing_temperature_is_greedy_and_an_extreme_penalty_still_draws(model, tokenizer):
    """temperature=2.2e-309 (a denormal an API fuzzer sent) once made every draw fail on NaN probabilities;
    below GREEDY_BELOW a temperature is greedy. A penalty that overflows scores to inf draws among those."""
    vanishing = Sampling(temperature=2.2e-309, max_new_tokens=8, seed=1)
    extreme = Sampling(temperature=1.0, repetition_penalty=1e-308, max_new_tokens=8, seed=1)
    chat = chat_on(model, tokenizer, max_batch=2)
    gens = [chat.stream([Turn("human", QUESTIONS[1])], s) for s in (vanishing, extreme)]
    for g in gens:
        g.start()
    replies = [g.run() for g in gens]
    chat.close()
    assert replies[0].text == solo_answers(model, tokenizer, [(QUESTIONS[1], greedy(8))])[0]
    assert replies[1].finish_reason == "length" and replies[1].text


def test_a_request_that_cannot_draw_fails_alone_and_at_once(model, tokenizer, monkeypatch):
    """An error choosing a request's first token (as it joins the batch) once left that request waiting
    forever: it now gets the error, and the request beside it its answer."""
    from llama2ft.inference import batching

    def fragile(logits, seen, sampling, *args):
        if sampling.seed == 13:
            raise RuntimeError("cannot draw")
        return real(logits, seen, sampling, *args)

    real = batching.next_token
    monkeypatch.setattr(batching, "next_token", fragile)
    chat = chat_on(model, tokenizer, max_batch=4)
    requests = {"bad": (QUESTIONS[0], Sampling(temperature=1.0, seed=13, max_new_tokens=8)),
                "good": (QUESTIONS[1], greedy(8))}
    gens = {name: chat.stream([Turn("human", q)], s) for name, (q, s) in requests.items()}
    results: dict = {}

    def wait(name: str) -> None:
        try:
            results[name] = gens[name].run().text
        except RuntimeError as exc:
            results[name] = exc

    for g in gens.values():
        g.start()
    waiters = [threading.Thread(target=wait, args=(name,), daemon=True) for name in gens]
    for t in waiters:
        t.start()
    for t in waiters:
        t.join(30)
    chat.close()
    monkeypatch.undo()
    assert isinstance(results.get("bad"), RuntimeError), results
    assert results["good"] == solo_answers(model, tokenizer, [requests["good"]])[0]


@pytest.mark.parametrize("samp", [Sampling(do_sample=False), Sampling(), Sampling(temperature=0.7, top_k=0, top_p=0.5),
                                  Sampling(temperature=1.2, top_k=5, top_p=1.0, repetition_penalty=1.0)])
def test_token_scores_match_transformers_logits_processors(samp):
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    torch.manual_seed(1)
    logits, seen = torch.randn(300) * 3, torch.randint(0, 300, (20,))
    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(samp.repetition_penalty)])
    if not samp.greedy:
        procs += [TemperatureLogitsWarper(samp.temperature)]
        procs += [TopKLogitsWarper(samp.top_k)] if samp.top_k else []
        procs += [TopPLogitsWarper(samp.top_p)] if samp.top_p < 1 else []
    expected = procs(seen.unsqueeze(0), logits.unsqueeze(0).clone())
    assert torch.equal(scores(logits, seen, samp), expected)


@pytest.mark.slow
def test_the_trained_embedded_model_answers_the_same_in_a_batch(learned_run):
    """The embedded model after training (the default recipe), loaded as llama2ft-eval loads it."""
    from llama2ft.inference.model_choice import ModelSpec
    from llama2ft.inference.settings import load

    conversations = [[Turn("human", f"数字 {n} 的中文读法是什么？")] for n in (7, 42, 680, 1999, 30, 512)]
    conversations += [[Turn("human", q)] for q in QUESTIONS[:2]]
    history = [Turn("human", "数字 12 的中文读法是什么？"), Turn("assistant", "十二"),
               Turn("human", "数字 345 的中文读法是什么？"), Turn("assistant", "三百四十五")]
    conversations += [[*history, Turn("human", "数字 680 的中文读法是什么？")]]  # far longer: much padding
    answers = []
    for max_batch in (1, 8):
        chat = load(ModelSpec(run=str(learned_run.path)), max_batch=max_batch)
        answers.append([r.text for r in chat.chat_batch(conversations, greedy(24), batch_size=1)])
        chat.close()
    assert answers[1] == answers[0]
    assert "六百八十" in answers[0][2]  # a trained answer, not noise
