"""`model.rope_scaling`: data.max_seq_len beyond the base's positions. Validation refuses a context the
model cannot cover; a scaled run trains past the base's positions, and the merged config.json, chat's
loader and the GGUF export all carry the scaling."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import compose, offline_env, run_app, train_ok
from llama2ft.config.validation import collect_problems
from llama2ft.model.rope import apply_rope_scaling

pytestmark = pytest.mark.usefixtures("app_threads")  # conftest: torch threads as run_app gives commands

DIGITS = "零一二三四五六七八九"


def long_rows_csv(path: Path, rows: int, chars: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for i in range(rows):
            w.writerow(["".join(DIGITS[(i * 7 + j * 3) % 10] for j in range(chars))])
    return path


def llama_config(positions: int = 64):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions)


# ---------------------------------------------------------------- config
def test_max_seq_len_beyond_positions_needs_scaling():
    problems = collect_problems(compose(["data.max_seq_len=300"]))  # the tiny preset has 256 positions
    assert any(p.startswith("data.max_seq_len=300 exceeds the model's 256 positions") and "model.rope_scaling=" in p
               for p in problems), problems
    assert collect_problems(compose(["data.max_seq_len=300", "model.rope_scaling={rope_type:linear,factor:2}"])) == []
    problems = collect_problems(compose(["data.max_seq_len=600", "model.rope_scaling={rope_type:yarn,factor:2}"]))
    assert any(p.startswith("data.max_seq_len=600 exceeds the 512 positions") for p in problems), problems


def test_bad_scaling_values_are_collected_with_the_rest():
    problems = collect_problems(compose(["model.rope_scaling={rope_type:ntk,factor:1}", "trainer.learning_rate=0"]))
    assert any(p.startswith("model.rope_scaling.rope_type='ntk': must be one of linear, dynamic, yarn")
               for p in problems)
    assert any(p.startswith("model.rope_scaling.factor=1.0: must be > 1") for p in problems)
    assert any(p.startswith("trainer.learning_rate=0") for p in problems)


def test_positions_of_a_local_base_are_read_without_loading_it(tmp_path):
    base = tmp_path / "llama2-7b"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 4096}))
    over = ["model=llama2-7b", f"model.name_or_path={base}", "data.max_seq_len=8192"]
    problems = collect_problems(compose(over))
    assert any(p.startswith("data.max_seq_len=8192 exceeds the model's 4096 positions") for p in problems), problems
    scaled = collect_problems(compose([*over, "model.rope_scaling={rope_type:dynamic,factor:2}"]))
    assert not [p for p in scaled if "max_seq_len" in p]


def test_too_long_context_is_refused_before_the_model_is_built(tmp_path):
    res = run_app("train", "experiment=tiny_smoke", "data.max_seq_len=512", f"hydra.run.dir={tmp_path}/r")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "data.max_seq_len=512 exceeds the model's 256 positions" in res.stderr
    assert not (tmp_path / "r" / "base_model").exists()


# ---------------------------------------------------------------- transformers config
@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_scaling_is_set_the_transformers_5_way(kind, tmp_path):
    from transformers import AutoConfig, LlamaForCausalLM

    config = apply_rope_scaling(llama_config(64), {"rope_type": kind, "factor": 4.0})
    assert config.rope_parameters["rope_type"] == kind and config.rope_parameters["factor"] == 4.0
    assert config.max_position_embeddings == (64 if kind == "dynamic" else 256)  # dynamic: the original length
    if kind == "yarn":
        assert config.rope_parameters["original_max_position_embeddings"] == 64
    config.save_pretrained(str(tmp_path))
    again = AutoConfig.from_pretrained(str(tmp_path))
    assert again.rope_parameters == config.rope_parameters
    model = LlamaForCausalLM(again)
    assert model.model.rotary_emb.rope_type == kind


def test_load_model_applies_scaling(tmp_path):
    from transformers import LlamaForCausalLM

    from llama2ft.model.loading import context_length, load_model

    LlamaForCausalLM(llama_config(64)).save_pretrained(str(tmp_path))
    plain = load_model(str(tmp_path), torch.float32)
    linear = load_model(str(tmp_path), torch.float32, rope_scaling={"rope_type": "linear", "factor": 4.0})
    torch.testing.assert_close(linear.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 4)
    assert (context_length(plain), context_length(linear)) == (64, 256)
    dynamic = load_model(str(tmp_path), torch.float32, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert context_length(dynamic) == 128


def test_gguf_rope_keys():
    gguf = pytest.importorskip("gguf")
    from llama2ft.core.errors import UserError
    from llama2ft.publishing.gguf import rope_scaling_keys

    assert rope_scaling_keys({"rope_type": "default", "rope_theta": 1e4}) == []
    assert rope_scaling_keys({"rope_type": "linear", "factor": 4.0}) == [
        ("add_rope_scaling_type", gguf.RopeScalingType.LINEAR), ("add_rope_scaling_factor", 4.0)]
    assert dict(rope_scaling_keys({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096}))[
        "add_rope_scaling_orig_ctx_len"] == 4096
    with pytest.raises(UserError, match="'dynamic', which llama.cpp"):
        rope_scaling_keys({"rope_type": "dynamic", "factor": 2.0})


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def rope_run(tmp_path_factory) -> tuple[Path, str]:
    """The tiny model with only 64 positions, trained on 200-token rows with linear x4 scaling."""
    tmp = tmp_path_factory.mktemp("rope")
    data = long_rows_csv(tmp / "long.csv", 16, 220)
    stdout = train_ok(tmp / "run", "experiment=tiny_smoke", "data=csv", f"data.train_file={data}",
                      "data.eval_file=null", "data.format=raw", "data.max_seq_len=200",
                      "model.init.max_position_embeddings=64", "model.rope_scaling={rope_type:linear,factor:4}",
                      "trainer.max_steps=4", "trainer.per_device_train_batch_size=4",
                      env=offline_env(tmp_path_factory.getbasetemp()))  # set up before the per-test environment
    return tmp / "run", stdout


@pytest.fixture(scope="module")
def rope_merged(rope_run, tmp_path_factory) -> Path:
    out = rope_run[0].parent / "merged"
    res = run_app("merge", f"run={rope_run[0]}", f"output={out}", env=offline_env(tmp_path_factory.getbasetemp()))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "verified: max |logit diff|" in res.stdout
    return out


LONG_IDS = [1, *range(300, 450)]  # 151 positions: past the base's 64


@pytest.mark.slow
def test_scaled_run_trains_past_the_base_positions(rope_run):
    run, stdout = rope_run
    assert "rope scaling: linear x4.0" in stdout  # read back from the model the Trainer got
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["max_len"] == 200 > 64
    assert json.loads((run / "metrics.json").read_text())["train_loss"] > 0


@pytest.mark.slow
def test_merged_config_reloads_with_the_scaling(rope_run, rope_merged):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from llama2ft.model.loading import load_model

    config = AutoConfig.from_pretrained(str(rope_merged))
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 4.0
    assert config.max_position_embeddings == 256
    merged = AutoModelForCausalLM.from_pretrained(str(rope_merged), dtype=torch.float32).eval()
    base = load_model(str(rope_run[0] / "base_model"), torch.float32, rope_scaling={"rope_type": "linear",
                                                                                     "factor": 4.0})
    ref = PeftModel.from_pretrained(base, str(rope_run[0] / "adapter")).eval()
    unscaled = AutoModelForCausalLM.from_pretrained(str(rope_run[0] / "base_model"), dtype=torch.float32)
    with torch.no_grad():
        ids = torch.tensor([LONG_IDS])
        got, want = merged(input_ids=ids).logits, ref(input_ids=ids).logits
        assert float((got - want).abs().max()) < 1e-4
        assert float((unscaled(input_ids=ids).logits - want).abs().max()) > 1e-2  # the scaling matters


@pytest.mark.slow
def test_chat_loads_a_scaled_run_with_its_scaling(rope_run):
    from llama2ft.inference.loader import ModelSpec, load_chat_model

    chat = load_chat_model(ModelSpec(run=str(rope_run[0]), device="cpu"))
    assert chat.model.config.rope_parameters["rope_type"] == "linear"
    assert chat.context_length == 256


@pytest.mark.slow
def test_gguf_export_carries_the_scaling(rope_merged, tmp_path):
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    res = run_app("export", f"source={rope_merged}", f"output={out}", "quant=f32")
    assert res.returncode == 0, res.stderr[-3000:]
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["llama.rope.scaling.type"].contents() == "linear"
    assert fields["llama.rope.scaling.factor"].contents() == pytest.approx(4.0)
    assert fields["llama.context_length"].contents() == 256
    try:
        import llama_cpp
    except ImportError:
        return
    from transformers import AutoModelForCausalLM

    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=1, verbose=False, logits_all=True)
    llm.eval(LONG_IDS)
    cpp = torch.tensor(llm.scores[len(LONG_IDS) - 1])
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(str(rope_merged), dtype=torch.float32)(
            input_ids=torch.tensor([LONG_IDS])).logits[0, -1]
    # measured: 1.9e-4 with the scaling keys, 1.0e-2 without them
    assert float((cpp - hf).abs().max()) < 2e-3 * max(1.0, float(hf.abs().max()))


@pytest.mark.slow
def test_dynamic_scaling_is_not_exported_to_gguf(rope_merged, tmp_path):
    pytest.importorskip("gguf")
    src = tmp_path / "dynamic"
    shutil.copytree(rope_merged, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    (src / "config.json").write_text(json.dumps(cfg))
    res = run_app("export", f"source={src}", f"output={tmp_path / 'd.gguf'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "RoPE scaling 'dynamic', which llama.cpp (GGUF) does not have" in res.stderr
    assert not (tmp_path / "d.gguf").exists()


@pytest.mark.slow
def test_trains_past_4096_positions(tmp_path):
    """Above Llama-2's 4,096: a 2-layer tiny model with 2,048 positions, yarn x4, rows of 4,608 tokens."""
    data = long_rows_csv(tmp_path / "long.csv", 3, 4700)
    run = tmp_path / "run"
    stdout = train_ok(run, "experiment=tiny_smoke", "data=csv", f"data.train_file={data}", "data.eval_file=null",
                      "data.format=raw", "data.max_seq_len=4608", "model.init.max_position_embeddings=2048",
                      "model.init.num_hidden_layers=2", "model.rope_scaling={rope_type:yarn,factor:4}",
                      "trainer.max_steps=2", "trainer.per_device_train_batch_size=1")
    assert "rope scaling: yarn x4.0" in stdout
    assert json.loads((run / "data_stats.json").read_text())["max_len"] == 4608
    assert json.loads((run / "metrics.json").read_text())["num_input_tokens_seen"] >= 2 * 4608


@pytest.mark.slow
def test_merge_from_paths_takes_the_scaling(rope_run, tmp_path):
    from transformers import AutoConfig

    run = rope_run[0]
    out = tmp_path / "m"
    res = run_app("merge", f"base={run / 'base_model'}", f"adapters=[{run / 'adapter'}]", f"output={out}",
                  "rope_scaling={rope_type:linear,factor:4}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert AutoConfig.from_pretrained(str(out)).rope_parameters["factor"] == 4.0
    res = run_app("merge", f"run={run}", f"output={tmp_path / 'n'}", "rope_scaling={rope_type:linear,factor:4}")
    assert res.returncode == 2 and "a run= merge uses the run's model.rope_scaling" in res.stderr
