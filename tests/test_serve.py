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


def test_bad_start_gets_one_clear_message(tmp_path):
    res = run_app("serve", f"run={tmp_path}", "port=0")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "not a training run" in res.stderr and "port=0" in res.stderr
