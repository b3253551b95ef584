"""SIGTERM to a real llama2ft-serve / llama2ft-web process with a streaming answer in flight: new requests
get 503, /health says draining, the answer finishes as it would have, the server exits 0; past drain_seconds
what is still running is cut and the server exits 0 all the same."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import free_port, start_app
from fault_points import pause_env, release, wait_paused
from llama2ft import PROJECT_ROOT

pytestmark = pytest.mark.slow
# the session's learned run: it answers this question with text (the smoke run's 10 steps answer nothing at all,
# so no answer would ever be in flight)
QUESTION = "数字 680 的中文读法是什么？"
SETTINGS = ("", 0.0, 0.95, 50, 1.3, 24)  # the web page's: system, temperature, top_p, top_k, repetition_penalty, max


def hold_next(pauses):
    """Arm the `stream` point again: the next answer's first piece holds it in flight."""
    for name in ("stream.paused", "stream.go"):
        (pauses / name).unlink(missing_ok=True)


def draining(url: str, new_request: tuple[str, dict]) -> None:
    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "draining" and health.json()["in_flight"] >= 1
    path, body = new_request
    refused = httpx.post(url + path, json=body, timeout=10)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "server_draining"
    assert refused.headers["retry-after"] == "5" and refused.headers["connection"] == "close"


def ends_with_0(proc: subprocess.Popen, within: float) -> str:
    started = time.time()
    out, err = proc.communicate(timeout=within + 30)
    assert proc.returncode == 0, err[-3000:]
    assert time.time() - started < within, "it waited for the grace period with nothing in flight"
    return out


def test_serve_drains_a_stream_in_flight(learned_run, tmp_path, monkeypatch):
    from openai import OpenAI

    pauses = tmp_path / "pauses"
    for key, value in pause_env(pauses, "stream").items():
        monkeypatch.setenv(key, value)
    proc, url = start_app("serve", f"run={learned_run.path}", "temperature=0", "max_new_tokens=24", "drain_seconds=60",
                          ready_path="/health")
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": QUESTION}]
        box: list = []
        reference = threading.Thread(target=lambda: box.append(client.chat.completions.create(
            model="m", messages=messages).choices[0].message.content))
        reference.start()
        wait_paused(pauses, "stream")  # the point holds every first answer: let the reference go on at once
        release(pauses, "stream")
        reference.join()
        hold_next(pauses)

        pieces, finish = [], []

        def stream() -> None:
            for chunk in client.chat.completions.create(model="m", messages=messages, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish.append(chunk.choices[0].finish_reason)

        streaming = threading.Thread(target=stream)
        streaming.start()
        wait_paused(pauses, "stream")  # the answer is in flight: its first piece is out
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        draining(url, ("/v1/chat/completions", {"messages": messages}))
        release(pauses, "stream")
        streaming.join(timeout=60)
        assert "".join(pieces) == box[0] and finish in (["stop"], ["length"])  # the whole answer, as if alone
        out = ends_with_0(proc, within=30)
        assert "llama2ft-serve: drained in" in out
    finally:
        proc.kill()


def test_web_drains_an_answer_in_flight(learned_run, tmp_path, monkeypatch):
    from gradio_client import Client

    pauses = tmp_path / "pauses"
    for key, value in pause_env(pauses, "stream").items():
        monkeypatch.setenv(key, value)
    proc, url = start_app("web", f"run={learned_run.path}", "drain_seconds=60")
    try:
        reference = Client(url + "/", verbose=False).submit(QUESTION, *SETTINGS, api_name="/chat")
        wait_paused(pauses, "stream")
        release(pauses, "stream")
        answer = reference.result(timeout=60)
        hold_next(pauses)

        job = Client(url + "/", verbose=False).submit(QUESTION, *SETTINGS, api_name="/chat")
        wait_paused(pauses, "stream")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        draining(url, ("/gradio_api/queue/join", {"data": [QUESTION, *SETTINGS], "fn_index": 0}))
        release(pauses, "stream")
        assert job.result(timeout=60) == answer
        out = ends_with_0(proc, within=30)
        assert "llama2ft-web: drained in" in out
    finally:
        proc.kill()


ENDLESS = """
import asyncio, sys
from llama2ft.serving.drain import serve_api

async def endless(scope, receive, send):  # a stream that never ends
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while True:
        await send({"type": "http.response.body", "body": b"x\\n", "more_body": True})
        await asyncio.sleep(0.05)

serve_api(endless, "127.0.0.1", int(sys.argv[1]), float(sys.argv[2]), "endless")
"""


def test_past_the_grace_period_the_server_exits_0_and_cuts_what_runs():
    port, grace = free_port(), 1.5
    proc = subprocess.Popen([sys.executable, "-c", ENDLESS, str(port), str(grace)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with httpx.stream("GET", url, timeout=5) as response:
                    lines = response.iter_lines()
                    next(lines)
                    proc.send_signal(signal.SIGTERM)
                    signalled = time.time()
                    assert httpx.get(f"{url}/health", timeout=5).status_code == 503
                    with pytest.raises(httpx.HTTPError):
                        for _ in lines:  # cut once the grace period is over
                            pass
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert grace <= time.time() - signalled < grace + 10
        assert "endless: drained in" in out and "1 still running, cancelled" in out
    finally:
        proc.kill()

