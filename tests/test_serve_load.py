"""Load on the generation core and the API: requests take turns on the model (never two generations at
once), a full queue answers 503 with Retry-After instead of queueing without bound, bodies are capped,
and /health answers during a flood. A scripted model stands in for a trained one."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from conftest import free_port
from llama2ft.data.dialogue import Turn
from llama2ft.inference.request import QueueFull
from llama2ft.inference.sampling import Sampling
from test_generation import ScriptedModel, scripted_chat

GREEDY = Sampling(do_sample=False, max_new_tokens=16)


class CountingModel(ScriptedModel):
    """A scripted model that records how many generations run on it at the same time."""

    def __init__(self, script: list[int], delay_s: float):
        super().__init__(script, delay_s)
        self.running = self.most = 0
        self._lock = threading.Lock()

    def generate(self, *args, **kwargs):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().generate(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1


def counting_chat(tokenizer, delay_s: float = 0.01, max_queue=None):
    chat = scripted_chat(tokenizer, answer="六百八十", delay_s=delay_s)
    chat.model = CountingModel(chat.model.script, delay_s)
    chat.max_queue = max_queue
    return chat


def test_requests_take_turns_on_the_model(tokenizer):
    chat = counting_chat(tokenizer)
    answers, errors = [], []

    def ask() -> None:
        try:
            answers.append(chat.chat([Turn("human", "数字 680 的中文读法是什么？")], GREEDY).text)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and answers == ["六百八十"] * 8
    assert chat.model.most == 1  # two generations at once would interleave their streamers and KV caches
    chat.close()


def test_a_full_queue_refuses_with_a_retry_time(tokenizer):
    chat = counting_chat(tokenizer, delay_s=0.05, max_queue=2)
    gens = [chat.stream([Turn("human", f"问题 {i}")], GREEDY) for i in range(4)]
    gens[0].start()
    time.sleep(0.1)  # the first is running: two more may wait
    gens[1].start()
    gens[2].start()
    with pytest.raises(QueueFull) as info:
        gens[3].start()
    assert info.value.retry_after >= 1 and "busy" in str(info.value)
    assert [g.run().text for g in gens[:3]] == ["六百八十"] * 3
    gens[3].start()  # room again once the queue drained
    assert gens[3].run().text == "六百八十"
    chat.close()


@pytest.fixture
def api(tokenizer):
    """The real API app under uvicorn on 127.0.0.1, on a slow scripted model with max_queue=2."""
    import uvicorn

    from llama2ft.serving.api import create_app

    chat = counting_chat(tokenizer, delay_s=0.03, max_queue=2)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(chat, GREEDY, "m", max_request_bytes=4096), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield url, chat
    server.should_exit = True
    thread.join(timeout=10)
    chat.close()


def test_a_flood_gets_200_or_503_and_health_keeps_answering(api, capfd):
    url, chat = api
    body = {"model": "m", "messages": [{"role": "user", "content": "数字 680 的中文读法是什么？"}]}
    results: list[httpx.Response] = []
    health_times: list[float] = []

    def ask(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            if i % 2:
                with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as r:
                    r.read()
                    results.append(r)
            else:
                results.append(client.post(f"{url}/v1/chat/completions", json=body))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            started = time.time()
            assert client.get(f"{url}/health").json()["status"] == "ok"
            health_times.append(time.time() - started)
            time.sleep(0.05)
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(r.status_code for r in results)
    assert len(statuses) == 24 and set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 3 and statuses.count(503) >= 1, statuses
    for r in results:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "server_busy"
        elif r.headers["content-type"].startswith("application/json"):
            assert r.json()["choices"][0]["message"]["content"] == "六百八十"
        else:
            assert "六" in r.text and r.text.rstrip().endswith("data: [DONE]")
    assert max(health_times) < 2.0
    assert chat.model.most == 1
    assert "Traceback" not in capfd.readouterr().err


def test_request_bodies_are_capped(api):
    url, _ = api
    big = {"model": "m", "messages": [{"role": "user", "content": "长" * 5000}]}
    with httpx.Client(timeout=30) as client:
        declared = client.post(f"{url}/v1/chat/completions", json=big)
        assert declared.status_code == 413 and "request body over 4096 bytes" in declared.json()["error"]["message"]

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"model": "m", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield "长".encode() * 500
            yield b'"}]}'

        streamed = client.post(f"{url}/v1/chat/completions", content=chunks(),
                               headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert client.get(f"{url}/health").status_code == 200
