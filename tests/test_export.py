"""llama2ft-export: GGUF tensor names, shapes, types, the q/k rotary permutation and the metadata,
read back with gguf.GGUFReader; in llama.cpp (required in CI: LLAMA2FT_REQUIRE_LLAMA_CPP=1), greedy tokens
and the tokenization of typed prompts match transformers, on the embedded and on the real Llama-2 tokenizer."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, AppResult, run_app
from llama2ft import PROJECT_ROOT

pytestmark = pytest.mark.usefixtures("app_threads")  # conftest: torch threads as run_app gives commands

gguf = pytest.importorskip("gguf", reason="the gguf package (pip install 'llama2ft[export]') is not installed")

LAYERS, HIDDEN, HEADS, KV_HEADS, FFN = 2, 128, 4, 2, 384


TOKENIZERS = {"embedded": PROJECT_ROOT / "data" / "tokenizer", "llama2": SHARED_DATA / "llama2-tokenizer"}


def small_llama(tmp_path_factory, tokenizer: Path) -> Path:
    """A small random Llama folder as llama2ft-merge writes it (safetensors + config + tokenizer)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if not (tokenizer / "tokenizer.json").is_file():
        pytest.skip(f"{tokenizer} not present (the real Llama-2 tokenizer lives in ../shared/data)")
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=256,
                         rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init: sharper logits, fewer near-ties in greedy decoding
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    from llama2ft.model.loading import save_tokenizer

    out = tmp_path_factory.mktemp("export") / "merged"
    model.save_pretrained(str(out))
    save_tokenizer(tok, out)  # as llama2ft-merge saves it
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return small_llama(tmp_path_factory, TOKENIZERS["embedded"])


@pytest.fixture(scope="session", params=sorted(TOKENIZERS))
def any_model_dir(request, tmp_path_factory) -> Path:
    return small_llama(tmp_path_factory, TOKENIZERS[request.param])


def import_llama_cpp():
    if os.environ.get("LLAMA2FT_REQUIRE_LLAMA_CPP"):  # CI installs ../shared/wheels: the test must run there
        import llama_cpp

        return llama_cpp
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make test` installs it "
                                                   "from ../shared/wheels when that folder exists)")


def export(source: Path, output: Path, *args: str) -> AppResult:
    return run_app("export", "format=gguf", f"source={source}", f"output={output}", *args)


def export_ok(source: Path, output: Path, *args: str) -> "gguf.GGUFReader":
    res = export(source, output, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    return gguf.GGUFReader(str(output))


def field(reader, key: str):
    return reader.fields[key].contents()


def test_gguf_names_shapes_and_metadata(model_dir, tmp_path):
    from safetensors.torch import load_file

    from llama2ft.publishing.gguf import permute_qk

    reader = export_ok(model_dir, tmp_path / "m.gguf", "quant=f16")
    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(LAYERS) for n in
        ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected
    # GGUF lists dimensions fastest-first: [in, out] for an HF [out, in] weight
    assert tensors["blk.0.attn_k.weight"].shape.tolist() == [HIDDEN, KV_HEADS * HIDDEN // HEADS]
    assert tensors["blk.0.ffn_down.weight"].shape.tolist() == [FFN, HIDDEN]
    assert tensors["token_embd.weight"].shape.tolist() == [HIDDEN, 2048]
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32

    hf = load_file(str(model_dir / "model.safetensors"))
    q = np.asarray(tensors["blk.1.attn_q.weight"].data, dtype=np.float32).reshape(HIDDEN, HIDDEN)
    k = np.asarray(tensors["blk.1.attn_k.weight"].data, dtype=np.float32).reshape(-1, HIDDEN)
    v = np.asarray(tensors["blk.1.attn_v.weight"].data, dtype=np.float32).reshape(-1, HIDDEN)
    hq, hk = (hf[f"model.layers.1.self_attn.{n}_proj.weight"].numpy() for n in ("q", "k"))
    np.testing.assert_allclose(q, permute_qk(hq, HEADS), atol=2e-3)
    np.testing.assert_allclose(k, permute_qk(hk, KV_HEADS), atol=2e-3)
    assert not np.allclose(q, hq, atol=2e-3)  # the permutation really moved rows
    np.testing.assert_allclose(v, hf["model.layers.1.self_attn.v_proj.weight"].numpy(), atol=2e-3)
    # pairs (i, i + d/2) of each HF head become neighbours (2i, 2i+1) in llama.cpp's layout
    d = HIDDEN // HEADS
    np.testing.assert_allclose(q[1], hq[d // 2], atol=2e-3)

    assert field(reader, "general.architecture") == "llama"
    expect = {"llama.context_length": 256, "llama.embedding_length": HIDDEN, "llama.block_count": LAYERS,
              "llama.feed_forward_length": FFN, "llama.rope.dimension_count": HIDDEN // HEADS,
              "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV_HEADS}
    for key, value in expect.items():
        assert field(reader, key) == value, key
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert field(reader, "tokenizer.ggml.model") == "llama"
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 2048 and tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[13] == "<0x0A>"
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == gguf.TokenType.CONTROL
    assert types[13] == gguf.TokenType.BYTE and gguf.TokenType.NORMAL in types
    assert (field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.eos_token_id"),
            field(reader, "tokenizer.ggml.unknown_token_id")) == (1, 2, 0)
    merges = json.loads((model_dir / "tokenizer.json").read_text())["model"]["merges"]
    first = "".join(merges[0]) if isinstance(merges[0], list) else merges[0].replace(" ", "")
    scores = field(reader, "tokenizer.ggml.scores")
    assert scores[tokens.index(first)] == max(s for s, t in zip(scores, types) if t == gguf.TokenType.NORMAL
                                              and s != 0.0)


def test_q8_0_quantizes_matrices_and_keeps_norms(model_dir, tmp_path):
    reader = export_ok(model_dir, tmp_path / "m.gguf", "quant=q8_0")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["output.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert t.shape.tolist() == [HIDDEN, FFN] and t.n_bytes == HIDDEN * FFN // 32 * 34


def test_bad_inputs(model_dir, tmp_path):
    for args, needle in (((model_dir, tmp_path / "a.gguf", "quant=q2_k"), "quant='q2_k' is unknown"),
                         ((tmp_path / "nope", tmp_path / "a.gguf"), "does not exist")):
        res = export(*args)
        assert res.returncode == 2 and "Traceback" not in res.stderr and needle in res.stderr, res.stderr
    (tmp_path / "exists.gguf").write_bytes(b"keep")
    res = export(model_dir, tmp_path / "exists.gguf")
    assert res.returncode == 2 and "already exists" in res.stderr
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.gguf"]


@pytest.mark.slow
def test_llama_cpp_greedy_tokens_match_transformers(any_model_dir, tmp_path):
    llama_cpp = import_llama_cpp()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "m.gguf"
    export_ok(any_model_dir, path, "quant=f32")  # f32: no rounding, so even close logits pick the same token
    tok = AutoTokenizer.from_pretrained(str(any_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(any_model_dir), dtype=torch.float32).eval()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False, logits_all=False)
    for text in ["Human: 你好，请介绍一下你自己。\n", "What is 12 plus 30?"]:
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            hf = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12,
                                repetition_penalty=1.0, eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        llm.reset()
        got = []
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            got.append(t)
            if len(got) == len(hf):
                break
        assert got == hf, text


@pytest.mark.slow
def test_llama_cpp_tokenizes_typed_prompts_like_transformers(any_model_dir, tmp_path):
    """What an Ollama/llama.cpp user types reaches the model in the tokens it was trained on: the
    templates' prompts (special tokens included), Chinese, English, digits; with and without BOS."""
    llama_cpp = import_llama_cpp()
    import csv

    from transformers import AutoTokenizer

    from llama2ft.data.dialogue import Turn, parse_dialogue
    from llama2ft.data.templates import get_template

    path = tmp_path / "m.gguf"
    export_ok(any_model_dir, path, "quant=q8_0")
    tok = AutoTokenizer.from_pretrained(str(any_model_dir))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False, vocab_only=True)
    turns = [Turn("human", "数字 680 的中文读法是什么？"), Turn("assistant", "六百八十"), Turn("human", "Hello, 12 + 30?")]
    prompts = [get_template(name, "请用中文回答。").prompt(turns, tok) for name in ("human_assistant", "llama2_inst")]
    with open(PROJECT_ROOT / "data" / "sample" / "dev.csv", encoding="utf-8") as f:
        texts = [t.text for row in csv.DictReader(f) for t in parse_dialogue(row["text"])][:40]
    texts += ["[INST] 数字 680 是什么？ [/INST]", "Human: 你好", "你好", "12345 and 678", "中间  两个空格", "Hello world"]
    for text in prompts + texts:
        expected = tok(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == [tok.bos_token_id, *expected], text
