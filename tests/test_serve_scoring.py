"""The API scores like a model, proven with the real third-party clients: lm-evaluation-harness's
`local-completions` model against `llama2ft-serve` gives the same per-question log-likelihoods and choices as
lm-eval's `hf` model on the same merged folder (the project's benchmark sample with lm-eval's C-Eval/CMMLU
prompts, and a cloze task on which the model's choices vary); the `openai` client reads the logprobs fields,
whose values are the model's own log-softmax; one BOS on a raw prompt; the OpenAI penalties and the served
defaults do what they say; unsupported fields get a 400 naming them."""
from __future__ import annotations

import json
import os
import re
import select
import time

import httpx
import pytest
import torch
import yaml

from conftest import offline_env, run_app, start_app
from llama2ft import PROJECT_ROOT
from llama2ft.evaluation.benchmark_data import LAYOUTS, read_local, write_tasks

pytestmark = pytest.mark.slow
SAMPLE = PROJECT_ROOT / "data" / "benchmarks"
PROMPT = "Human: 数字 1001 的中文读法是什么？\n</s><s>Assistant: "
NUMBERS = (1001, 3003, 1111)
SERVERS: dict = {}  # the module's server process, for its start-up log


@pytest.fixture(scope="module")
def merged(learned_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("scoring") / "merged"
    res = run_app("merge", f"run={learned_run.path}", f"output={out}", env=offline_env(tmp_path_factory.getbasetemp()))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def server(merged, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        for key, value in offline_env(tmp_path_factory.getbasetemp()).items():
            mp.setenv(key, value)
        proc, url = start_app("serve", f"model.name_or_path={merged}", "served_name=m", ready_path="/health")
    SERVERS["proc"] = proc
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def model(merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval(), \
        AutoTokenizer.from_pretrained(str(merged))


@pytest.fixture()
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def task_dir(tmp_path) -> str:
    """The sample as lm-eval tasks (lm-eval's own C-Eval and CMMLU prompts), plus a cloze task on the same
    questions in the training format, scoring the readings themselves: there the model's choices vary."""
    subjects = read_local(LAYOUTS["ceval"], str(SAMPLE / "ceval"), 2) + read_local(LAYOUTS["cmmlu"], str(SAMPLE / "cmmlu"), 2)
    write_tasks(subjects, tmp_path)
    cloze = {"task": "numbers_cloze", "include": str(tmp_path / "ceval-valid_middle_school_mathematics.yaml"),
             "description": "", "doc_to_text": "Human: {{question}}\n</s><s>Assistant:",
             "doc_to_choice": "{{[A, B, C, D]}}", "fewshot_delimiter": "\n</s><s>"}
    (tmp_path / "numbers_cloze.yaml").write_text(yaml.safe_dump(cloze, allow_unicode=True), encoding="utf-8")
    return str(tmp_path)


def per_question(results: dict) -> dict[tuple[str, int], list[tuple[float, bool]]]:
    return {(task, row["doc_id"]): [tuple(r) for r in row["filtered_resps"]]
            for task, rows in results["samples"].items() for row in rows}




def readme_lm_eval_settings() -> dict[str, bool]:
    """The settings of the README's `lm_eval --model local-completions` command, besides the server and model."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    args = dict(kv.split("=", 1) for kv in re.search(r"--model local-completions .*?--model_args (\S+)", text,
                                                      re.S).group(1).split(","))
    assert "plus ,tokenized_requests=False" in text  # the README's text mode: the same arguments plus this one
    return {"add_bos_token": args["add_bos_token"] == "True"}


# The README's lm-eval settings for the server, in both of local-completions' modes: token ids (its default) or
# text (tokenized_requests=False, for servers that take no ids). add_bos_token=True in both: lm-eval counts the
# context with the BOS the server puts before a raw text prompt (and sends it as "<s>..." text, which gets no
# second one); without it lm-eval's text mode scores one context token too many.
LM_EVAL_MODES = {"token ids": readme_lm_eval_settings(),
                 "text": {**readme_lm_eval_settings(), "tokenized_requests": False}}


def test_lm_eval_scores_the_server_as_its_hf_model(server, merged, tmp_path, app_threads):
    """lm-eval's own API client (token prompts or text prompts, lists of prompts a request, echo + logprobs) and
    its hf model: the same log-likelihood for every choice of every question."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks = task_dir(tmp_path)
    common = dict(tasks=["ceval-valid", "cmmlu", "numbers_cloze"], num_fewshot=2, limit=6, batch_size=4,
                  log_samples=True)
    hf = simple_evaluate(model="hf", model_args={"pretrained": str(merged), "add_bos_token": True, "device": "cpu",
                                                 "dtype": "float32"},
                         task_manager=TaskManager(include_defaults=False, include_path=tasks), **common)
    local = per_question(hf)
    choices = {key: max(range(4), key=lambda i: local[key][i][0]) for key in local}
    cloze = [c for (task, _), c in choices.items() if task == "numbers_cloze"]
    assert len(set(cloze)) > 1  # the model knows the readings: its choices follow the right answers
    for mode, settings in LM_EVAL_MODES.items():
        limit = 6 if mode == "token ids" else 2  # text mode: the first 2 questions of each subject are enough
        api = simple_evaluate(model="local-completions", model_args={
            "base_url": f"{server}/v1/completions", "model": "m", "tokenizer": str(merged),
            "tokenizer_backend": "huggingface", "max_length": 256, **settings},
            task_manager=TaskManager(include_defaults=False, include_path=tasks), **{**common, "limit": limit})
        served = per_question(api)
        assert served.keys() == {key for key in local if key[1] < limit} and len(served) == 5 * limit, mode
        for key, answers in served.items():
            assert [lp for lp, _ in answers] == pytest.approx([lp for lp, _ in local[key]], abs=1e-4), (mode, key)
            assert [g for _, g in answers] == [g for _, g in local[key]], (mode, key)  # is_greedy: top_logprobs
            assert max(range(4), key=lambda i: answers[i][0]) == choices[key], (mode, key)
        for task in ("ceval-valid", "cmmlu", "numbers_cloze") if limit == common["limit"] else ():
            assert api["results"][task]["acc,none"] == hf["results"][task]["acc,none"], (mode, task)
    # above chance (4 choices): how far above depends on the trained run's numerics (threads, CPU kind); a
    # `make train` run gave 3 of 6, the suite's learned_run more
    assert hf["results"]["numbers_cloze"]["acc,none"] > 0.25


def test_lm_eval_text_prompts_are_the_ids_it_counts(any_tokenizer):
    """lm-eval's text mode with the README's settings: the text it sends for a (context, continuation) becomes,
    on the server, exactly the ids whose context length it counts (a BOS in front, none doubled), on the
    embedded and the real Llama-2 tokenizer (whose decode puts a space after `<s>`)."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from llama2ft.data.templates import get_template
    from llama2ft.inference.engine import ChatModel

    lm = LocalCompletionsAPI(base_url="http://127.0.0.1:1/v1/completions", model="m",
                             tokenizer=any_tokenizer.name_or_path, tokenizer_backend="huggingface",
                             **LM_EVAL_MODES["text"])
    chat = ChatModel(None, any_tokenizer, get_template("human_assistant"), context_length=4096)
    for context, continuation in [(PROMPT.rstrip(), " 一千零一"), ("问题：1+1=?\n答案：", " B"),
                                  ("Hello world, this is", " a test"), ("<s>Human: 你好\n</s><s>Assistant:", " 你好")]:
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        assert context_ids[0] == any_tokenizer.bos_token_id
        text = lm.create_message([context_ids + continuation_ids])
        assert chat.raw_prompt_ids(text, room=0) == context_ids + continuation_ids, (context, text)


def log_softmax(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_the_openai_client_reads_the_scoring_fields(client, model, app_threads):
    net, tok = model
    scored = client.completions.create(model="m", prompt=PROMPT, echo=True, logprobs=2, max_tokens=0)
    choice, lp = scored.choices[0], scored.choices[0].logprobs
    assert choice.text == PROMPT and choice.finish_reason == "length" and scored.usage.completion_tokens == 0
    ids = [tok.bos_token_id, *tok(PROMPT, add_special_tokens=False).input_ids]
    assert scored.usage.prompt_tokens == len(ids) and lp.tokens[0] == "<s>" and "".join(lp.tokens[1:]) == PROMPT
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset == [0, *(len("".join(lp.tokens[1:i])) for i in range(1, len(ids)))]
    expected = log_softmax(net, ids)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(expected[i - 1, ids[i]].item(), abs=1e-4)
        top = sorted(lp.top_logprobs[i].values(), reverse=True)
        assert top[0] == pytest.approx(expected[i - 1].max().item(), abs=1e-4)
        assert lp.top_logprobs[i][lp.tokens[i]] == lp.token_logprobs[i] and len(lp.top_logprobs[i]) <= 3
    # the model's own distribution: a request's sampling settings change nothing; "<s>" in the text: one BOS
    again = client.completions.create(model="m", prompt="<s>" + PROMPT, echo=True, logprobs=2, max_tokens=0,
                                      temperature=1.7, top_p=0.2, frequency_penalty=2, extra_body={"top_k": 3})
    assert again.usage.prompt_tokens == len(ids) and again.choices[0].logprobs.token_logprobs == lp.token_logprobs

    many = client.completions.create(model="m", prompt=[PROMPT, PROMPT.replace("1001", "202")], n=2, max_tokens=8,
                                     logprobs=1, temperature=0, extra_body={"repetition_penalty": 1.0})
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text != many.choices[2].text  # greedy: the n agree
    for c in many.choices:
        tokens = c.logprobs.tokens
        assert "".join(tokens).removesuffix("</s>") == c.text and c.logprobs.text_offset[0] == len(PROMPT) - (
            c.index >= 2) * (len("1001") - len("202"))
    tokens = many.choices[0].logprobs.tokens
    row = [*ids, *tok(many.choices[0].text, add_special_tokens=False).input_ids]
    assert many.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in many.choices) - sum(
        c.finish_reason == "stop" for c in many.choices)  # EOS is shown among the tokens, not counted in the text
    expected = log_softmax(net, row + ([tok.eos_token_id] if tokens[-1] == "</s>" else []))
    assert many.choices[0].logprobs.token_logprobs[0] == pytest.approx(expected[len(ids) - 1, row[len(ids)]].item(),
                                                                        abs=1e-4)

    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "数字 1001 的中文读法是什么？"}],
                                          logprobs=True, top_logprobs=2, temperature=0, n=2,
                                          extra_body={"repetition_penalty": 1.0})
    assert [c.index for c in chat.choices] == [0, 1] and chat.choices[0].message.content == chat.choices[1].message.content
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert bytes(b for t in content for b in t.bytes).decode() == chat.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob  # greedy


def test_n_sampled_choices_are_each_seeded(client):
    """Choice j of a request with seed s is what a request with seed s + j gets alone."""
    kw = dict(model="m", prompt=PROMPT.replace("1001", "4567"), max_tokens=6, temperature=1.5, top_p=1.0,
              extra_body={"top_k": 0, "repetition_penalty": 1.0})
    together = [c.text for c in client.completions.create(n=3, seed=7, **kw).choices]
    alone = [client.completions.create(seed=7 + j, **kw).choices[0].text for j in range(3)]
    assert together == alone and len(set(together)) > 1


def greedy_by_hand(net, ids: list[int], steps: int, eos: int, repetition: float = 1.0, frequency: float = 0.0
                   ) -> list[int]:
    """Greedy decoding written out: transformers' repetition penalty, then OpenAI's frequency penalty."""
    out: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = net(torch.tensor([ids + out])).logits[0, -1].float()
        seen = torch.tensor(ids + out)
        picked = logits[seen]
        logits[seen] = torch.where(picked < 0, picked * repetition, picked / repetition)
        for t in out:
            logits[t] -= frequency
        out.append(int(logits.argmax()))
        if out[-1] == eos:
            break
    return out


def startup_log(proc, needle: str, seconds: float = 10.0) -> str:
    """What the server printed so far, read until `needle` shows (raw reads: a text reader's buffer would hide
    lines from select)."""
    text, end = "", time.time() + seconds
    while needle not in text and time.time() < end:
        if select.select([proc.stdout], [], [], max(0.0, end - time.time()))[0]:
            chunk = os.read(proc.stdout.fileno(), 65536).decode("utf-8", "replace")
            if not chunk:
                break
            text += chunk
    return text


def test_penalties_and_the_served_defaults(client, server, model, app_threads):
    net, tok = model
    defaults = httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer x"}).json()["data"][0]
    assert defaults["sampling_defaults"]["repetition_penalty"] == 1.3  # visible, as the start-up log says
    log = startup_log(SERVERS["proc"], "repetition_penalty=1.0 turns")
    line = next((x for x in log.splitlines() if x.startswith("sampling defaults")), "")
    assert "repetition_penalty=1.3" in line and "temperature=0.3" in line and "extra_body=" in line, log[-2000:]
    for n in NUMBERS:
        prompt = PROMPT.replace("1001", str(n))
        ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False).input_ids]
        for extra, kw, by_hand in (({}, {}, dict(repetition=1.3)),  # the served default, at temperature 0
                                   ({"repetition_penalty": 1.0}, {}, {}),
                                   ({"repetition_penalty": 1.0}, {"frequency_penalty": 2.0}, dict(frequency=2.0))):
            got = client.completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0, logprobs=0,
                                            extra_body=extra, **kw).choices[0]
            want = tok.decode(greedy_by_hand(net, ids, 8, tok.eos_token_id, **by_hand), skip_special_tokens=True)
            assert got.text == want, (n, extra, kw)


def test_unsupported_fields_get_a_400_naming_them(client, server):
    import openai

    user = [{"role": "user", "content": "你好"}]
    for kw, needle in [(dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
                       (dict(response_format={"type": "json_object"}), "response_format"),
                       (dict(logit_bias={"5": 10}), "logit_bias"), (dict(n=9), "n=9"),
                       (dict(logprobs=True, stream=True), "logprobs")]:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="m", messages=user, **kw)
        assert needle in info.value.body["message"], kw
    for kw, needle in [(dict(suffix="x"), "suffix"), (dict(max_tokens=0), "max_tokens=0"),
                       (dict(logprobs=21), "logprobs=21"), (dict(echo=True, stream=True), "echo")]:
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="m", prompt=PROMPT, **kw)
        assert needle in info.value.body["message"], kw
    res = httpx.post(f"{server}/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, "made_up_field": 1})
    assert res.status_code == 400 and "made_up_field: not supported" in res.json()["error"]["message"]
    assert client.completions.create(model="m", prompt=PROMPT, max_tokens=2).choices[0].text  # still serving


def test_choices_say_logprobs_null_unless_asked(server):
    """As OpenAI answers: every chat and completion choice (and stream chunk) has "logprobs", null when not asked."""
    chat = {"messages": [{"role": "user", "content": "你好"}], "max_tokens": 2}
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", {"prompt": PROMPT, "max_tokens": 2})):
        choices = httpx.post(f"{server}{path}", json=body, timeout=60).json()["choices"]
        assert choices and all("logprobs" in c and c["logprobs"] is None for c in choices), (path, choices)
        streamed = httpx.post(f"{server}{path}", json={**body, "stream": True}, timeout=60).text
        chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
        assert chunks and all(c["choices"][0]["logprobs"] is None and "logprobs" in c["choices"][0] for c in chunks)
