"""llama2ft-web: streaming and session isolation through Gradio's client, login, and a real headless
browser (Debian's chromium + chromedriver) typing a question and seeing the answer."""
from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import start_app
from llama2ft import PROJECT_ROOT
from llama2ft.serving.network import is_loopback
from llama2ft.serving.web_app import parse_auth

ARTIFACTS = PROJECT_ROOT / "outputs" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SETTINGS = ("", 0.0, 0.95, 50, 1.3, 16)  # system, temperature, top_p, top_k, repetition_penalty, max_new_tokens


def start_web(*args: str) -> tuple[subprocess.Popen, str]:
    proc, url = start_app("web", *args)
    return proc, url + "/"


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.fixture(scope="module")
def web_server(learned_run) -> Iterator[tuple[str, list[str]]]:
    """The module's server and what it has printed on stderr so far. It listens on 0.0.0.0 with no auth, so the
    same start also shows the warning an exposed chat gives (one server start less for these tests)."""
    # greedy by default: the browser sends the page's settings, and the 400-step model sampled at the
    # community's temperature 0.3 answers 680 with "六百八十零" about one time in eight
    proc, url = start_web(f"run={learned_run.path}", "temperature=0", "host=0.0.0.0")
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)  # keeps the pipe from filling
    reader.start()
    yield url, stderr
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def web(web_server) -> str:
    return web_server[0]


def test_auth_and_host_helpers():
    assert parse_auth("me:se:cret") == ("me", "se:cret")
    assert parse_auth(None) is None
    for bad in ("me", ":pw", "me:"):
        with pytest.raises(ValueError):
            parse_auth(bad)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


@pytest.mark.slow
def test_answers_stream_and_sessions_stay_apart(web):
    from gradio_client import Client

    client = Client(web, verbose=False)
    updates = list(client.submit("数字 680 的中文读法是什么？", *SETTINGS, api_name="/chat"))
    assert updates[-1] == "六百八十"
    assert len(updates) >= 2 and all(updates[-1].startswith(u) for u in updates)  # grew piece by piece

    questions = [f"数字 {n} 的中文读法是什么？" for n in (680, 12, 903, 47)]
    alone = [Client(web, verbose=False).predict(q, *SETTINGS, api_name="/chat") for q in questions]
    with cf.ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(lambda q: Client(web, verbose=False).predict(q, *SETTINGS, api_name="/chat"),
                                 questions))
    assert together == alone
    assert len(set(alone)) == len(alone)


@pytest.mark.slow
def test_login_is_required_with_auth(learned_run):
    from gradio_client import Client

    proc, url = start_web(f"run={learned_run.path}", "auth=alice:s3cret")
    try:
        with pytest.raises(Exception):
            Client(url, verbose=False)  # no credentials: the app is not reachable
        with pytest.raises(Exception):
            Client(url, auth=("alice", "wrong"), verbose=False)
        answer = Client(url, auth=("alice", "s3cret"), verbose=False).predict("数字 680 的中文读法是什么？", *SETTINGS,
                                                                            api_name="/chat")
        assert answer == "六百八十"
    finally:
        stop(proc)


@pytest.mark.slow
def test_exposed_without_auth_warns(web_server):
    """The module's server (host=0.0.0.0, no auth) said so as it started, and serves all the same."""
    url, stderr = web_server
    deadline = time.time() + 10  # printed before the server came up: only the reader thread may lag
    while not any("warning: host=0.0.0.0 exposes the chat" in line for line in stderr) and time.time() < deadline:
        time.sleep(0.05)
    assert any("warning: host=0.0.0.0 exposes the chat" in line for line in stderr), "".join(stderr)[-3000:]
    assert httpx.get(url, timeout=10).status_code == 200


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("LLAMA2FT_REQUIRE_BROWSER"),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them and requires the test)")
def test_browser_types_a_question_and_sees_the_answer(web):
    assert CHROMIUM and CHROMEDRIVER, "LLAMA2FT_REQUIRE_BROWSER is set but chromium/chromedriver are missing"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def bot_messages(d) -> list[str]:
        return [e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, "[data-testid='bot']") if e.text.strip()]

    try:
        driver.get(web)
        box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "textarea"))
        box.send_keys("数字 680 的中文读法是什么？")
        box.send_keys(Keys.ENTER)
        WebDriverWait(driver, 60).until(lambda d: "六百八十" in bot_messages(d))
        assert "数字 680 的中文读法是什么？" in driver.find_element(By.TAG_NAME, "body").text
        # a second question in the same session: history is kept on the page
        box.send_keys("数字 12 的中文读法是什么？")
        box.send_keys(Keys.ENTER)
        WebDriverWait(driver, 60).until(lambda d: len(bot_messages(d)) >= 2)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "web_chat.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:4] == b"\x89PNG"
    finally:
        driver.quit()
