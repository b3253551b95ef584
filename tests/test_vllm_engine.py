"""engine=vllm, tested where it can be without a GPU: the arguments built for vLLM (token-id prompts from our
template, a merged folder or a base + LoRA adapter, sampling names), the one-line errors where vLLM is not
installed or there is no GPU, and the stepping loop on a stand-in vLLM engine (streaming, stop texts,
cancellation). Never run against a real vLLM here."""
from __future__ import annotations

import json
import sys
import time
import types

import pytest

from conftest import run_app
from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import Turn
from llama2ft.data.templates import encode_prompt, get_template
from llama2ft.inference.model_choice import ModelSource, Resolved
from llama2ft.inference.sampling import Sampling
from llama2ft.inference.vllm_engine import (VllmChatModel, engine_args, lora_request_args, require_vllm,
                                            sampling_args, token_prompt)


def resolved(base: str, tokenizer: str, adapter: str | None) -> Resolved:
    return Resolved(base, adapter, tokenizer, "human_assistant", None, "none", "m")


def test_merged_folder_and_base_with_adapter_arguments(tmp_path):
    merged = engine_args(resolved("/m/merged", "/m/merged", None), ModelSource(dtype="bfloat16"), max_batch=16)
    assert merged["model"] == "/m/merged" and merged["max_num_seqs"] == 16 and merged["dtype"] == "bfloat16"
    assert "enable_lora" not in merged
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32}), encoding="utf-8")
    lora = engine_args(resolved("/m/base", "/run/tokenizer", str(adapter)), ModelSource(revision="r1"), max_batch=8)
    assert lora["model"] == "/m/base" and lora["tokenizer"] == "/run/tokenizer"  # the run's tokenizer, not the base's
    assert lora["enable_lora"] is True and lora["max_lora_rank"] == 16
    assert lora["revision"] == "r1" and lora["dtype"] == "auto" and "revision" not in merged
    req = lora_request_args(str(adapter))
    assert req["lora_path"] == str(adapter.resolve()) and req["lora_int_id"] >= 1


def test_sampling_settings_under_vllm_names():
    greedy = sampling_args(Sampling(do_sample=False, temperature=0.7), max_tokens=50, eos=2)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == -1 and greedy["max_tokens"] == 50
    sampled = sampling_args(Sampling(temperature=0.7, top_p=0.9, top_k=0, repetition_penalty=1.2, seed=5), 10, 2)
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["seed"]) == (0.7, 0.9, -1, 5)
    assert sampled["repetition_penalty"] == 1.2 and sampled["stop_token_ids"] == [2]
    assert sampling_args(Sampling(top_k=40), 10, 2)["top_k"] == 40


@pytest.mark.parametrize("template", ["human_assistant", "llama2_inst"])
def test_vllm_gets_the_training_prefix_as_token_ids(any_tokenizer, template):
    chat = VllmChatModel(None, any_tokenizer, get_template(template), 512, "v", max_batch=4)
    turns = [Turn("human", "你好"), Turn("assistant", "你好！"), Turn("human", "数字 680 的中文读法是什么？")]
    ids, _, _ = chat.prompt_ids(turns, 32)
    assert token_prompt(ids) == {"prompt_token_ids": encode_prompt(get_template(template), any_tokenizer, turns)}


def test_missing_vllm_or_gpu_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"needs the vllm package.*llama2ft\[vllm\]"):
        require_vllm()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # installed, but no GPU
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        require_vllm(cuda_available=False)


def test_serve_and_eval_refuse_engine_vllm_here_before_loading(tmp_path):
    for module, args in (("serve", ["model.name_or_path=/nowhere", "max_batch=0"]),
                         ("eval", ["models=[/nowhere]", f"output={tmp_path}/e"])):
        res = run_app(module, "engine=vllm", *args)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "engine=vllm needs the vllm package" in res.stderr  # vllm is not installed here
        assert ("max_batch=0: must be >= 1" in res.stderr) == (module == "serve")  # collected with the others


class FakeEngine:
    """vLLM's LLMEngine as the stepping loop uses it: each request gets its script, one token per step."""

    def __init__(self, script: list[int]):
        self.script, self.added, self.aborted, self.running = script, [], [], {}

    def add_request(self, rid, prompt, params, lora_request=None):
        self.added.append((prompt, params, lora_request))
        self.running[rid] = 0

    def abort_request(self, rids):
        for rid in rids:
            self.aborted.append(rid)
            self.running.pop(rid, None)

    def step(self):
        time.sleep(0.01)  # a token at a time, slower than the reader
        outs = []
        for rid in list(self.running):
            self.running[rid] += 1
            made = self.script[: self.running[rid]]
            done = len(made) == len(self.script)
            outs.append(types.SimpleNamespace(request_id=rid, finished=done,
                                              outputs=[types.SimpleNamespace(token_ids=made)]))
            if done:
                del self.running[rid]
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", module)


def test_stepping_loop_streams_stops_and_cancels(fake_vllm, tokenizer):
    script = [*tokenizer("一二三四五六七八九十", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    engine = FakeEngine(script)
    chat = VllmChatModel(engine, tokenizer, get_template("human_assistant"), 256, "v", max_batch=4, lora="LORA")
    gen = chat.stream([Turn("human", "数一数")], Sampling(do_sample=False))
    assert "".join(gen) == "一二三四五六七八九十" and gen.reply.finish_reason == "stop"
    prompt, params, lora = engine.added[0]
    assert prompt == {"prompt_token_ids": gen.prompt} and lora == "LORA" and params["temperature"] == 0.0
    stopped = chat.chat([Turn("human", "数一数")], Sampling(do_sample=False, stop=("五",)))
    assert stopped.text == "一二三四" and len(engine.aborted) == 1  # vLLM is told to stop at the stop text
    quitter = chat.stream([Turn("human", "数一数")], Sampling(do_sample=False))
    pieces = iter(quitter)
    next(pieces)
    pieces.close()
    assert quitter.reply.finish_reason == "cancelled" and len(engine.aborted) == 2
    chat.close()
