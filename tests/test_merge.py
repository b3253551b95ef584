"""llama2ft-merge: merged weights equal base+adapter, the output folder is stock-loadable, sharded,
documented and written atomically; bad inputs give one clear error line."""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import AppResult, TrainedRun, offline_env, run_app, run_cli, train_ok

pytestmark = pytest.mark.usefixtures("app_threads")  # conftest: torch threads as run_app gives commands

IDS = [[1, 400, 500, 600, 700, 12, 42], [1, 300, 301, 302]]


# ---------------------------------------------------------------- helpers
def merge(*args: str, env: dict | None = None) -> AppResult:
    return run_app("merge", *args, env=env)


def merge_ok(*args: str, env: dict | None = None) -> AppResult:
    res = merge(*args, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "verified: max |logit diff|" in res.stdout
    return res


def assert_user_error(res: AppResult, *needles: str) -> str:
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def logits(model, ids=IDS) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=torch.tensor([x])).logits[0].float() for x in ids]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def reference(base: Path, adapters: list[Path]):
    """base (float32) + adapters applied one after the other with stock peft."""
    from peft import PeftModel

    model = load(base)
    for a in adapters:
        model = PeftModel.from_pretrained(model, str(a)).merge_and_unload()
    return model.eval()


def random_adapter(base: Path, out: Path, targets: list[str], save: list[str], seed: int,
                   **model_kwargs) -> Path:
    """A LoRA adapter with random (non-zero) A and B, and perturbed copies of `save` modules.
    With `model_kwargs`, it is made for a *different* tiny Llama (another architecture)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if model_kwargs:
        cfg = json.loads((base / "config.json").read_text())
        cfg.update(model_kwargs)
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "dtype"}))
    else:
        model = load(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                  modules_to_save=save or None, init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return out


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_run(smoke_run: TrainedRun) -> Path:
    """The session's shared tiny_smoke run (read only: merges write elsewhere)."""
    return smoke_run.path


@pytest.fixture(scope="session")
def merged(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "tiny-chat"
    merge_ok(f"run={tiny_run}", f"output={out}", "max_shard_size=1MB", env=offline_env(tmp_path_factory.getbasetemp()))
    return out


# ---------------------------------------------------------------- tests
@pytest.mark.slow
def test_merged_equals_base_plus_adapter_after_reload(tiny_run, merged):
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = load(tiny_run / "base_model")
    base_logits = logits(base)
    ref = logits(PeftModel.from_pretrained(base, str(tiny_run / "adapter")).eval())
    got = logits(load(merged))  # a fresh load from disk with stock transformers
    assert max_diff(ref, got) < 1e-4
    assert max_diff(base_logits, got) > 1e-2  # the adapter really changed the model
    tok = AutoTokenizer.from_pretrained(str(merged))
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2


@pytest.mark.slow
def test_shards_index_config_and_generation_config(merged):
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (merged / "model.safetensors").exists()
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    seen, total = {}, 0
    for name in files:
        assert (merged / name).stat().st_size <= 1_000_000 + 300_000  # max_shard_size=1MB (+ header)
        with safe_open(str(merged / name), "pt") as f:
            for key in f.keys():
                seen[key] = name
                t = f.get_tensor(key)
                assert t.dtype == torch.float32
                total += t.numel() * t.element_size()
    assert seen == index["weight_map"]
    assert index["metadata"]["total_size"] == total
    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == "float32" and "quantization_config" not in config
    gen = json.loads((merged / "generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["temperature"] == 0.3 and gen["top_p"] == 0.95
    assert gen["top_k"] == 50 and gen["repetition_penalty"] == 1.3 and gen["max_new_tokens"] == 512
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 0)


@pytest.mark.slow
def test_model_card(merged, tiny_run):
    card = (merged / "README.md").read_text(encoding="utf-8")
    # provenance.json travels with the weights, and the card gives what it records
    assert (merged / "provenance.json").read_bytes() == (tiny_run / "provenance.json").read_bytes()
    record = json.loads((merged / "provenance.json").read_text(encoding="utf-8"))
    assert "## Provenance" in card and "| `provenance.json` |" in card
    for entry in record["data"]:
        assert f"| `{entry['path']}` | {entry['role']} | {entry['size']} | `{entry['sha256']}` |" in card
    assert f"| transformers | {record['packages']['transformers']} |" in card
    assert f"| torch | {record['packages']['torch']} |" in card
    if record["git"]["commit"]:
        assert f"- llama2ft commit: `{record['git']['commit']}`" in card
    header = card.split("---\n")[1]
    for line in ("base_model:", "language:\n- zh\n- en", "- llama2\n- lora\n- llama2ft\n- chinese",
                 "library_name: transformers", "pipeline_tag: text-generation"):
        assert line in header, line
    assert card.startswith("---\n")
    assert "Template `human_assistant`" in card and "<s>Human: 你好" in card and "<s>Assistant:\n```" in card
    assert "| LoRA | r=8, alpha=16" in card  # training config
    assert "| trained_tokens |" in card  # data_stats.json
    assert "| eval_loss |" in card  # metrics.json
    assert "AutoModelForCausalLM.from_pretrained" in card


@pytest.mark.slow
def test_multi_adapter_order_matters_and_matches_sequential(tiny_run, tmp_path):
    base = tiny_run / "base_model"
    # a1 replaces lm_head (modules_to_save), a2 puts LoRA on lm_head: the order changes the result
    a1 = random_adapter(base, tmp_path / "a1", ["q_proj", "v_proj"], ["lm_head"], seed=1)
    a2 = random_adapter(base, tmp_path / "a2", ["q_proj", "lm_head"], [], seed=2)
    outs = {}
    for order in ((a1, a2), (a2, a1)):
        out = tmp_path / f"m-{order[0].name}-{order[1].name}"
        merge_ok(f"base={base}", f"adapters=[{order[0]},{order[1]}]", f"output={out}", "dtype=float32",
                 f"tokenizer={tiny_run / 'tokenizer'}")
        got = logits(load(out))
        assert max_diff(logits(reference(base, list(order))), got) < 1e-4
        outs[order] = got
    assert max_diff(outs[(a1, a2)], outs[(a2, a1)]) > 1e-3
    assert "Adapters merged, in order:" in (tmp_path / "m-a1-a2" / "README.md").read_text()


@pytest.mark.slow
def test_resized_embeddings_and_lora_on_the_head(tiny_run, tmp_path):
    """modules_to_save copies with more rows than the base (added tokens) grow the vocabulary;
    LoRA on lm_head makes peft save a full copy of the head (`lm_head.base_layer.weight`) too."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file

    base, vocab = tiny_run / "base_model", 2080
    model = load(base)
    model.resize_token_embeddings(vocab)
    torch.manual_seed(5)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False,
                                     modules_to_save=["embed_tokens", "lm_head"])).save_pretrained(tmp_path / "grow")
    head = tmp_path / "head"
    get_peft_model(load(base), LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj", "lm_head"],
                                          init_lora_weights=False)).save_pretrained(head)
    assert any("base_layer" in k for k in load_file(str(head / "adapter_model.safetensors")))

    out = tmp_path / "out"
    merge_ok(f"base={base}", f"adapters=[{tmp_path / 'grow'}]", f"output={out}", "dtype=float32",
             f"tokenizer={tiny_run / 'tokenizer'}")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == vocab
    ref = load(base)
    ref.resize_token_embeddings(vocab)
    ref = PeftModel.from_pretrained(ref, str(tmp_path / "grow")).eval()
    ids = [*IDS, [1, 2070, 2075, 2079]]  # new tokens included
    assert max_diff(logits(ref, ids), logits(load(out), ids)) < 1e-4

    out2 = tmp_path / "out2"
    merge_ok(f"base={base}", f"adapters=[{head}]", f"output={out2}", "dtype=float32")
    assert max_diff(logits(reference(base, [head])), logits(load(out2))) < 1e-4


@pytest.mark.slow
def test_nf4_adapter_merges_into_full_precision_base(tmp_path):
    run = tmp_path / "nf4"
    train_ok(run, "experiment=tiny_smoke", "quant=nf4", "trainer.max_steps=3")
    out = tmp_path / "merged"
    merge_ok(f"run={run}", f"output={out}")
    ref = logits(reference(run / "base_model", [run / "adapter"]))
    assert max_diff(ref, logits(load(out))) < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert "| quantization while training | nf4 |" in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_refuses_to_overwrite_then_overwrite_replaces(tiny_run, tmp_path):
    out = tmp_path / "out"
    merge_ok(f"run={tiny_run}", f"output={out}")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert_user_error(merge(f"run={tiny_run}", f"output={out}"), "already exists", "overwrite=true")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    merge_ok(f"run={tiny_run}", f"output={out}", "overwrite=true", "dtype=bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folders left


@pytest.mark.slow
def test_killed_merge_leaves_no_output_and_next_run_cleans_up(tiny_run, tmp_path):
    out = tmp_path / "out"
    res = run_cli("merge", f"run={tiny_run}", f"output={out}", "max_shard_size=1MB",  # it SIGKILLs itself
                  env={"OMP_NUM_THREADS": "1", "LLAMA2FT_MERGE_KILL_AFTER_SHARDS": "1"})
    assert res.returncode == -signal.SIGKILL
    assert not out.exists()
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".out.tmp-")  # the half-written temp folder
    merge_ok(f"run={tiny_run}", f"output={out}", "max_shard_size=1MB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_missing_run_folder(tmp_path):
    assert_user_error(merge(f"run={tmp_path / 'nope'}", f"output={tmp_path / 'o'}"), "not a training run folder")


def test_run_without_adapter(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name_or_path: null}\n")
    assert_user_error(merge(f"run={run}", f"output={tmp_path / 'o'}"), "has no adapter/ folder")
    assert not (tmp_path / "o").exists()


def test_bad_dtype_and_missing_output(tmp_path):
    res = merge(f"run={tmp_path}", "dtype=int4")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "dtype='int4' is unknown" in res.stderr and "output=DIR is required" in res.stderr


@pytest.mark.slow
def test_adapter_of_another_architecture(tiny_run, tmp_path):
    base = tiny_run / "base_model"
    wide = random_adapter(base, tmp_path / "wide", ["q_proj"], [], seed=3, hidden_size=64, intermediate_size=192)
    assert_user_error(merge(f"base={base}", f"adapters=[{wide}]", f"output={tmp_path / 'o'}"),
                      "model.layers.0.self_attn.q_proj.weight", "another architecture")
    deep = random_adapter(base, tmp_path / "deep", ["q_proj"], [], seed=4, num_hidden_layers=6)
    assert_user_error(merge(f"base={base}", f"adapters=[{deep}]", f"output={tmp_path / 'o'}"),
                      "model.layers.4.self_attn.q_proj.weight", "does not have")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_base_without_safetensors(tiny_run, tmp_path):
    from safetensors.torch import load_file

    base = tmp_path / "bin-base"
    base.mkdir()
    shutil.copy(tiny_run / "base_model" / "config.json", base / "config.json")
    torch.save(load_file(str(tiny_run / "base_model" / "model.safetensors")), base / "pytorch_model.bin")
    assert_user_error(merge(f"base={base}", f"adapters=[{tiny_run / 'adapter'}]", f"output={tmp_path / 'o'}"),
                      "no .safetensors", "pytorch_model.bin", "save_pretrained")


def test_parse_size_and_shard_plan():
    from llama2ft.publishing.safetensors_stream import parse_size, plan_shards, shard_names

    assert parse_size("2GB") == 2 * 10**9 and parse_size("500MB") == 500 * 10**6 and parse_size("1024") == 1024
    with pytest.raises(ValueError):
        parse_size("lots")
    items = [(k, ("float32", [n], n)) for k, n in (("a", 6), ("b", 6), ("c", 20), ("d", 1))]
    assert plan_shards(items, 12) == [["a", "b"], ["c"], ["d"]]
    assert shard_names(1) == ["model.safetensors"]
    assert shard_names(2)[1] == "model-00002-of-00002.safetensors"


@pytest.mark.slow
def test_verification_catches_a_wrong_merge(tiny_run):
    """verify() compares against base+adapter: the plain base (adapter not applied) must fail it."""
    from llama2ft.core.errors import UserError
    from llama2ft.publishing.verify import verify

    with pytest.raises(UserError, match="verification failed: merged logits differ"):
        verify(tiny_run / "base_model", [tiny_run / "adapter"], tiny_run / "base_model", IDS, 2048, 1e-4)


@pytest.mark.slow
def test_failed_verification_leaves_no_output(tiny_run, tmp_path, monkeypatch):
    """A merge that went wrong (here: the LoRA update is skipped) is caught and nothing is published."""
    from omegaconf import OmegaConf

    import llama2ft.merge as merge_mod
    import llama2ft.publishing.merge as merge_lib
    from llama2ft.config.app_schemas import MergeConfig
    from llama2ft.core.errors import UserError

    monkeypatch.setattr(merge_lib, "add_lora_", lambda *args: None)
    cfg = OmegaConf.merge(OmegaConf.structured(MergeConfig), {"run": str(tiny_run), "output": str(tmp_path / "out")})
    with pytest.raises(UserError, match=r"verification failed: merged logits differ .* by up to \d"):
        merge_mod.run_merge(cfg)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("dora", [False, True])
def test_fold_in_blocks_equals_the_whole_sum_rounded_once(dtype, dora):
    """add_lora_ with its reused float32 block buffer: W + scale*B@A (DoRA: each row rescaled to its
    magnitude) summed in float32 and rounded once, as the whole product computed in float64 is (an
    odd number of rows: a last, shorter block)."""
    from llama2ft.publishing import merge as merge_lib

    torch.manual_seed(0)
    rows, cols = 2 * merge_lib._BLOCK // 96 + 5, 96
    w = (torch.randn(rows, cols) * 0.02).to(dtype)
    a, b = torch.randn(8, cols) * 0.1, torch.randn(rows, 8) * 0.1
    magnitude = torch.rand(rows) + 0.5 if dora else None
    want = w.double() + 1.5 * (b.double() @ a.double())
    if dora:
        want = want * (magnitude.double() / want.norm(dim=1)).unsqueeze(1)
    got = w.clone()
    merge_lib.add_lora_(got, a, b, 1.5, magnitude, torch.empty(merge_lib._BLOCK))
    ulp = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}[dtype]
    assert torch.allclose(got.double(), want.to(dtype).double(), rtol=ulp, atol=ulp * 0.02)
    if dtype != torch.float32:  # one rounding: no further from the exact sum than rounding it is (float32 math aside)
        assert (got.double() - want).abs().max() <= (want.to(dtype).double() - want).abs().max() * 1.01
