"""llama2ft-serve, driven by the official openai client against a server this test starts."""
from __future__ import annotations

import concurrent.futures as cf

import pytest

from conftest import run_app, start_app

pytestmark = pytest.mark.slow
KEY = "sk-test-key"
QUESTIONS = [f"数字 {n} 的中文读法是什么？" for n in range(680, 696)]


@pytest.fixture(scope="module")
def server(learned_run):
    proc, url = start_app("serve", f"run={learned_run.path}", f"api_key={KEY}", "temperature=0", "max_new_tokens=16",
                          ready_path="/health")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture()
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(client, question: str, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}], **kw)


def test_models_and_health(server, client):
    import httpx

    assert [m.id for m in client.models.list().data] == ["run"]
    assert httpx.get(f"{server}/health").json() == {"status": "ok", "model": "run"}


def test_chat_completion_and_its_stream_agree(client):
    reply = ask(client, "数字 680 的中文读法是什么？")
    assert reply.choices[0].message.content == "六百八十"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0

    chunks = list(ask(client, "数字 680 的中文读法是什么？", stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2  # streamed as it was generated
    assert "".join(pieces) == "六百八十"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_vanishing_temperature_is_answered_greedily(client):
    """temperature=2.2e-309 (a denormal the schema fuzzer once sent) made every draw fail on NaN probabilities,
    and the request got no answer: below 1e-5 a temperature is greedy (inference/sampling.py)."""
    reply = ask(client, "数字 680 的中文读法是什么？", temperature=2.2e-309, n=2)
    assert [c.message.content for c in reply.choices] == ["六百八十"] * 2


def test_completions_endpoint(client):
    done = client.completions.create(model="tiny", prompt="Human: 数字 680 的中文读法是什么？", max_tokens=5)
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage.completion_tokens <= 5
    streamed = list(client.completions.create(model="tiny", prompt="Human: 数字", max_tokens=5, stream=True))
    assert streamed[-1].choices[0].finish_reason in ("stop", "length")


def test_concurrent_requests_get_their_own_answers(client):
    """16 requests at once (half streaming): each equals the answer it gets when asked alone."""
    alone = {q: ask(client, q).choices[0].message.content for q in QUESTIONS}
    assert len(set(alone.values())) >= 8  # different questions, different answers: a mix-up would show

    def one(i: int) -> tuple[str, str]:
        q = QUESTIONS[i]
        if i % 2:
            chunks = ask(client, q, stream=True)
            return q, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return q, ask(client, q).choices[0].message.content

    with cf.ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = dict(pool.map(one, range(len(QUESTIONS))))
    assert together == alone


def test_api_key_is_required(server):
    import httpx
    import openai
    from openai import OpenAI

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    res = httpx.get(f"{server}/v1/models")  # no Authorization header at all
    assert res.status_code == 401 and res.json()["error"]["type"] == "authentication_error"


def test_bad_requests_get_400_and_the_server_keeps_serving(client):
    import openai

    bad = [
        dict(messages=[{"role": "user", "content": ""}]),
        dict(messages=[{"role": "user", "content": "hi"}], temperature=5),
        dict(messages=[{"role": "user", "content": "hi"}], max_tokens=0),
        dict(messages=[{"role": "user", "content": "很长的问题" * 100}]),
        dict(messages=[{"role": "system", "content": "only a system prompt"}]),
        dict(messages=[{"role": "user", "content": "hi"}], n=9),  # n is 1..8
    ]
    for kw in bad:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny", **kw)
        assert info.value.status_code == 400
        assert info.value.body["message"], kw
    import httpx

    res = httpx.post(str(client.base_url) + "chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "tiny"})
    assert res.status_code == 400 and "messages" in res.json()["error"]["message"]
    assert ask(client, "数字 680 的中文读法是什么？").choices[0].message.content == "六百八十"


def test_a_request_of_more_choices_than_max_queue_is_served(client):
    """A request takes one place in the queue however many choices it has: 3 prompts x n=8 on a server with
    max_queue=16 is answered (the fuzzer found it refused with a 503 that no retry could pass)."""
    done = client.completions.create(model="tiny", prompt=[f"数字 {n}" for n in (1, 2, 3)], n=8, max_tokens=2)
    assert [c.index for c in done.choices] == list(range(24))


def test_bad_start_gets_one_clear_message(tmp_path):
    res = run_app("serve", f"run={tmp_path}", "port=0")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "not a training run" in res.stderr and "port=0" in res.stderr


# The fuzzer's budget: requests per generation mode (schema-valid bodies, schema-breaking bodies) and its seed.
FUZZ_EXAMPLES = 150
FUZZ_SEED = 35
MAX_FUZZ_TOKENS = 4  # generated max_tokens above this are lowered to it: the answers stay cheap
# Why the server may refuse a body its schema allows: what a JSON Schema cannot state (serving/api_models.py)
UNSTATABLE = ("tokens; the model's context is", "not supported with stream=true",
              "only one prompt and n=1", "only n=1 with stream=true", "needs logprobs=true", "only with echo=true",
              "only best_of equal to n", "choices a request", "must end with a user message", "the message is empty")


def test_openapi_states_the_refusals_and_the_constraints(server):
    """/openapi.json: 400 (never 422), 401, 413 and 503 where they apply, and the ranges the server checks."""
    import httpx

    schema = httpx.get(f"{server}/openapi.json").json()
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert set(schema["paths"][path]["post"]["responses"]) == {"200", "400", "401", "413", "503"}, path
    assert set(schema["paths"]["/v1/models"]["get"]["responses"]) == {"200", "401", "503"}
    assert "422" not in str(schema) and "HTTPValidationError" not in str(schema)
    props = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert (props["temperature"]["minimum"], props["temperature"]["maximum"]) == (0, 2)
    assert (props["top_p"]["exclusiveMinimum"], props["top_p"]["maximum"]) == (0, 1)
    assert (props["n"]["minimum"], props["n"]["maximum"], props["logprobs"]["maximum"]) == (1, 8, 20)
    assert props["prompt"]["anyOf"][0] == {"type": "string", "minLength": 1, "pattern": r"\S"}
    assert props["prompt"]["anyOf"][2]["items"] == {"type": "integer", "minimum": 0, "maximum": 2047}  # the vocabulary
    assert schema["components"]["schemas"]["CompletionRequest"]["additionalProperties"] is False


def test_a_schema_fuzzer_gets_only_documented_answers(server, client):
    """schemathesis (seeded, FUZZ_EXAMPLES schema-valid and as many schema-breaking bodies): no 5xx, every
    status, content type, header and body as /openapi.json documents it, every schema-breaking body refused,
    and a schema-valid body refused only for what a schema cannot state (UNSTATABLE)."""
    from collections import Counter

    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                                   response_headers_conformance, response_schema_conformance,
                                                   status_code_conformance)

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance, negative_data_rejection]
    headers = {"Authorization": f"Bearer {KEY}"}
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    statuses: Counter = Counter()
    refused: list[str] = []

    for mode, operations in ((schemathesis.GenerationMode.POSITIVE, schema),
                             (schemathesis.GenerationMode.NEGATIVE, schema.include(method="POST"))):
        @seed(FUZZ_SEED)
        @settings(max_examples=FUZZ_EXAMPLES, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operations.as_strategy(generation_mode=mode))
        def fuzz(case) -> None:
            body = case.body if isinstance(case.body, dict) else {}
            for key in ("max_tokens", "max_completion_tokens"):
                if type(body.get(key)) is int and body[key] > MAX_FUZZ_TOKENS:
                    body[key] = MAX_FUZZ_TOKENS
            response = case.call(headers=headers, timeout=120)
            statuses[mode.value, response.status_code] += 1
            case.validate_response(response, checks=checks, headers=headers)
            if mode.is_positive and response.status_code == 400:
                refused.append(response.json()["error"]["message"])

        fuzz()
    print("fuzzer: (mode, status) -> requests:", dict(statuses))
    assert sum(statuses.values()) >= FUZZ_EXAMPLES  # hypothesis may stop early when it has seen every case
    assert statuses["positive", 200] > 0 and statuses["negative", 400] > 0
    # every problem a refusal names ("; " between them) must be one a schema cannot state
    unexplained = [m for m in refused if not all(any(r in part for r in UNSTATABLE) for part in m.split("; "))]
    assert not unexplained, unexplained
    assert ask(client, "数字 680 的中文读法是什么？").choices[0].message.content == "六百八十"  # still serving
