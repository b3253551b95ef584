"""llama2ft-chat on the trained tiny run: one-shot, interactive commands, a prompts file, bad input."""
from __future__ import annotations

import io
import json
import sys

import pytest

from conftest import AppResult, run_app

pytestmark = pytest.mark.slow
# Questions from the training data with their answers: the 400-step run knows these.
KNOWN = {"数字 680 的中文读法是什么？": "六百八十"}


def chat(*args: str, stdin: str = "") -> AppResult:
    """llama2ft-chat in this process, reading `stdin` as its terminal input."""
    terminal = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        return run_app("chat", *args)
    finally:
        sys.stdin = terminal


def assert_one_error(res: AppResult, *needles: str) -> None:
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    text = res.stderr[res.stderr.index("error:"):]
    for needle in needles:
        assert needle in text, text


def test_one_shot_prompt_answers_and_exits(learned_run):
    question, answer = next(iter(KNOWN.items()))
    res = chat(f"run={learned_run.path}", f"prompt='{question}'", "temperature=0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == answer


def test_interactive_commands_and_history(learned_run):
    script = "\n".join(["数字 680 的中文读法是什么？", "/system 请用中文回答。", "", "/reset", "/bogus",
                        "数字 12 的中文读法是什么？", "/exit", "never read"]) + "\n"
    res = chat(f"run={learned_run.path}", "temperature=0", stdin=script)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "assistant> 六百八十\n" in out
    assert "(system prompt set; conversation cleared)" in out
    assert "(conversation cleared)" in out
    assert "unknown command /bogus" in out
    assert out.count("assistant> ") == 2  # the empty line asked nothing; /exit stopped before the last line
    assert "Traceback" not in res.stderr


def test_prompts_file_to_jsonl(learned_run, tmp_path):
    txt = tmp_path / "q.txt"
    txt.write_text("数字 680 的中文读法是什么？\n\n数字 12 的中文读法是什么？\n", encoding="utf-8")
    res = chat(f"run={learned_run.path}", f"prompts_file={txt}", "temperature=0")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "q.txt.answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["数字 680 的中文读法是什么？", "数字 12 的中文读法是什么？"]
    assert rows[0]["answer"] == "六百八十" and rows[0]["finish_reason"] == "stop"

    table = tmp_path / "q.csv"
    table.write_text("\ufeffid,question\n1,数字 680 的中文读法是什么？\n", encoding="utf-8")
    out = tmp_path / "a.jsonl"
    res = chat(f"run={learned_run.path}", f"prompts_file={table}", f"output={out}", "temperature=0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(out.read_text(encoding="utf-8"))["answer"] == "六百八十"
    # an existing output is never overwritten
    assert_one_error(chat(f"run={learned_run.path}", f"prompts_file={table}", f"output={out}"), "already exists")


def test_a_merged_folder_brings_its_template(learned_run, tmp_path):
    out = tmp_path / "merged"
    res = run_app("merge", f"run={learned_run.path}", f"output={out}", "verify=false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "llama2ft.json").read_text(encoding="utf-8"))["template"] == "human_assistant"
    res = chat(f"model.name_or_path={out}", "prompt='数字 680 的中文读法是什么？'", "temperature=0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "六百八十"
    # base + adapter without merging gives the same answer
    res = chat(f"model.name_or_path={learned_run.path / 'base_model'}", f"adapter={learned_run.path / 'adapter'}",
               "prompt='数字 680 的中文读法是什么？'", "temperature=0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "六百八十"


def test_bad_input_gets_one_clear_message(learned_run, tmp_path):
    run = f"run={learned_run.path}"
    assert_one_error(chat("run=/no/such/run", "prompt=hi"), "/no/such/run", "not a training run")
    assert_one_error(chat("model.name_or_path=/no/such/model", "prompt=hi"), "/no/such/model", "not found")
    assert_one_error(chat(run, "prompt=''"), "empty")
    assert_one_error(chat(run, "prompt=hi", "temperature=3", "top_p=0"), "temperature=3", "top_p=0")
    assert_one_error(chat(run, f"prompt='{'很长的问题' * 80}'"), "too long", "256")
    assert_one_error(chat(run, f"prompts_file={tmp_path / 'missing.txt'}"), "missing.txt", "not found")

    other = tmp_path / "other-base"  # a Llama of another width: the run's adapter does not fit it
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(learned_run.path / "tokenizer"))
    LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    tok.save_pretrained(other)
    assert_one_error(chat(f"model.name_or_path={other}", f"adapter={learned_run.path / 'adapter'}", "prompt=hi"),
                     "does not fit", str(other))
