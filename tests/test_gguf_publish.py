"""What a published model carries into llama.cpp and Ollama, in llama-cpp-python itself: the GGUF's
tokenizer.chat_template, BOS/EOS/pad ids and what the tokenizer adds; `Llama.create_chat_completion`
prompts as llama2ft-chat does and answers alike (greedy) for both community templates, on the
embedded and the real Llama-2 tokenizer; k-quants through llama.cpp's quantizer with its fallback
for rows that are not a multiple of 256, written atomically; the Ollama Modelfile; the space prefix
decided from what the tokenizer does, for folders saved by llama2ft and by stock transformers."""
from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import offline_env, run_app
from llama2ft.data.chat_formats import ollama_template
from llama2ft.data.dialogue import Turn
from llama2ft.data.templates import get_template
from llama2ft.inference.engine import ChatModel
from llama2ft.inference.sampling import Sampling
from llama2ft.publishing.model_card import human_size
from test_export import TOKENIZERS, export, export_ok, field, import_llama_cpp

pytestmark = pytest.mark.usefixtures("app_threads")
gguf = pytest.importorskip("gguf", reason="the gguf package (pip install 'llama2ft[export]') is not installed")

RUN_SYSTEM = "你是一个乐于助人的助手。请用中文回答。"
CONVERSATIONS = [[Turn("human", "数字 680 的中文读法是什么？")],
                 [Turn("human", "1 加 1 等于几？"), Turn("assistant", "二"), Turn("human", "再加 3 呢？")]]
GREEDY = Sampling(temperature=0, repetition_penalty=1.0, max_new_tokens=16)


def random_llama(out: Path, tokenizer: Path, template: str, system: str | None, width: int = 256,
                 saved_by: str = "llama2ft") -> Path:
    """A small random Llama folder as llama2ft-merge writes it (`width` 256: rows a k-quant takes), its
    tokenizer carrying `template`; `saved_by=stock`: the tokenizer saved by plain save_pretrained."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llama2ft.data.chat_formats import publish_template
    from llama2ft.model.loading import open_tokenizer, save_tokenizer
    from llama2ft.model.run_folder import write_chat_meta

    if not (tokenizer / "tokenizer.json").is_file():
        pytest.skip(f"{tokenizer} not present (the real Llama-2 tokenizer lives in ../shared/data)")
    tok = open_tokenizer(str(tokenizer)) if saved_by == "llama2ft" else AutoTokenizer.from_pretrained(str(tokenizer))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=3 * width, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits than the default init: fewer near-ties in greedy decoding
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.save_pretrained(str(out))
    publish_template(tok, get_template(template, system))
    if saved_by == "llama2ft":
        save_tokenizer(tok, out)
    else:
        tok.save_pretrained(str(out))
    write_chat_meta(out, template, system)
    return out


@pytest.fixture(scope="session", params=sorted(TOKENIZERS))
def folders(request, tmp_path_factory) -> dict[str, Path]:
    """Per tokenizer: one folder per community template (llama2_inst with a system prompt)."""
    root = tmp_path_factory.mktemp(f"publish-{request.param}")
    return {name: random_llama(root / name, TOKENIZERS[request.param], name, system)
            for name, system in (("human_assistant", None), ("llama2_inst", RUN_SYSTEM))}


def chat_model(folder: Path) -> ChatModel:
    from llama2ft.inference.loader import load_chat_model
    from llama2ft.inference.model_choice import ModelSource, ModelSpec

    return load_chat_model(ModelSpec(model=ModelSource(name_or_path=str(folder))))


def llama(path: Path, **kwargs):
    llama_cpp = import_llama_cpp()
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False, **kwargs)


def messages(turns: list[Turn], system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user" if t.role == "human" else "assistant", "content": t.text} for t in turns]


def gguf_prompt_ids(llm, msgs: list[dict[str, str]]) -> list[int]:
    """The ids `create_chat_completion` feeds: the GGUF's template rendered by llama-cpp-python's own
    formatter, tokenized as its chat handler does (no BOS added: the template writes it)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    bos, eos = (llm._model.token_get_text(llm.token_bos()), llm._model.token_get_text(llm.token_eos()))
    result = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos)(messages=msgs)
    return llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)


def assert_prompts_and_answers_alike(chat: ChatModel, llm, systems=(None, "只用一个词回答。"),
                                     answers: bool = True) -> None:
    for turns in CONVERSATIONS:
        for system in systems:
            msgs = messages(turns, system)
            ids, _, _ = chat.prompt_ids(turns, 1, system)
            assert gguf_prompt_ids(llm, msgs) == ids, (turns, system)
            if answers:
                want = chat.chat(turns, GREEDY, system).text
                got = llm.create_chat_completion(messages=msgs, temperature=0, top_k=1, repeat_penalty=1.0,
                                                 max_tokens=GREEDY.max_new_tokens)["choices"][0]["message"]["content"]
                assert got.strip() == want, (turns, system)


def test_gguf_carries_template_special_ids_and_what_the_tokenizer_adds(folders, tmp_path):
    from transformers import AutoTokenizer

    for name, folder in folders.items():
        reader = export_ok(folder, tmp_path / f"{name}.gguf", "quant=f16", "modelfile=false")
        tok = AutoTokenizer.from_pretrained(str(folder))
        assert field(reader, "tokenizer.chat_template") == tok.chat_template
        assert (field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.eos_token_id"),
                field(reader, "tokenizer.ggml.padding_token_id")) == (1, 2, 0)
        assert field(reader, "tokenizer.ggml.add_bos_token") is True  # both tokenizers add BOS, not EOS
        assert field(reader, "tokenizer.ggml.add_eos_token") is False
        llm = llama(tmp_path / f"{name}.gguf", vocab_only=True)
        for text in ("你好，12 个 apples", "Human: 你好"):
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"]
        # the chat handler's prompt = llama2ft-chat's ids, multi-turn, with and without a system message
        chat = ChatModel(None, tok, get_template(name, RUN_SYSTEM if name == "llama2_inst" else None), 256, "t")
        assert_prompts_and_answers_alike(chat, llm, systems=(None, "只用一个词回答。", ""), answers=False)


@pytest.mark.slow
def test_chat_completion_answers_like_llama2ft_chat_llama2_inst(tmp_path):
    """Greedy answers of llama-cpp-python's chat completion (f32: no rounding) equal llama2ft-chat's, on
    the real tokenizer (the embedded one's random model writes lone byte tokens, which transformers
    decodes as U+FFFD and llama.cpp drops: the ids are checked above)."""
    folder = random_llama(tmp_path / "m", TOKENIZERS["llama2"], "llama2_inst", RUN_SYSTEM)
    export_ok(folder, tmp_path / "m.gguf", "quant=f32", "modelfile=false")
    assert_prompts_and_answers_alike(chat_model(folder), llama(tmp_path / "m.gguf"))


@pytest.fixture(scope="session")
def merged_learned(learned_run, tmp_path_factory) -> Path:
    """The default recipe's trained run, merged, with a q4_k_m GGUF exported into the merged folder."""
    import_llama_cpp()  # q4_k_m is llama.cpp's quantizer: without it the test is skipped, not in error
    out = tmp_path_factory.mktemp("learned-merged") / "learned-chat"
    env = offline_env(tmp_path_factory.getbasetemp())
    res = run_app("merge", f"run={learned_run.path}", f"output={out}", "verify=false", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_app("export", f"source={out}", f"output={out / 'learned-chat.q4_k_m.gguf'}", "quant=q4_k_m", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.mark.slow
def test_trained_model_merged_and_q4_k_m_prompt_and_answer_as_llama2ft_chat(merged_learned):
    """Done when of issue 26: train the embedded default, merge, export q4_k_m; the merged folder's
    apply_chat_template and llama-cpp-python's chat completion on the q4_k_m file both prompt the model
    exactly as llama2ft-chat does, and the greedy answers agree."""
    from transformers import AutoTokenizer

    chat = chat_model(merged_learned)
    tok = AutoTokenizer.from_pretrained(str(merged_learned))
    for turns in CONVERSATIONS:
        ids, _, _ = chat.prompt_ids(turns, 1)
        assert tok.apply_chat_template(messages(turns, None), add_generation_prompt=True)["input_ids"] == ids
    assert chat.chat(CONVERSATIONS[0], GREEDY).text == "六百八十"
    assert_prompts_and_answers_alike(chat, llama(merged_learned / "learned-chat.q4_k_m.gguf"))
    # the card's transformers sample, run as written: the prompt it builds is llama2ft-chat's
    card = (merged_learned / "README.md").read_text(encoding="utf-8")
    sample = card.split("```python\n")[1].split("```")[0].replace('"learned-chat"', repr(str(merged_learned)))
    scope: dict = {}
    exec(compile(sample, "card-sample", "exec"), scope)  # noqa: S102 - the published sample itself
    assert scope["inputs"]["input_ids"][0].tolist() == chat.prompt_ids([Turn("human", "你好，请介绍一下你自己。")], 1)[0]
    assert "Assistant: \"" not in card and "<s>Assistant:\n```" in card  # the example prompt ends at the colon
    files = card.split("## Files")[1]
    size = human_size((merged_learned / "learned-chat.q4_k_m.gguf").stat().st_size)
    assert f"| `learned-chat.q4_k_m.gguf` | {size} |" in files
    assert "`learned-chat.q4_k_m.Modelfile`" in files and "`model.safetensors`" in files


def quant_types(reader) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in reader.tensors}


def test_k_quants_and_llama_cpps_fallback(tmp_path):
    import_llama_cpp()
    wide = random_llama(tmp_path / "wide", TOKENIZERS["embedded"], "llama2_inst", RUN_SYSTEM, width=256)
    narrow = random_llama(tmp_path / "narrow", TOKENIZERS["embedded"], "human_assistant", None, width=128)
    sizes = {}
    main = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K", "q4_0": "Q4_0", "q8_0": "Q8_0", "f16": "F16"}
    for quant, kind in main.items():
        types = quant_types(export_ok(wide, tmp_path / f"wide.{quant}.gguf", f"quant={quant}", "modelfile=false"))
        assert types["blk.0.attn_q.weight"] == kind and types["blk.0.attn_norm.weight"] == "F32", quant
        sizes[quant] = (tmp_path / f"wide.{quant}.gguf").stat().st_size
    assert quant_types(gguf.GGUFReader(str(tmp_path / "wide.q4_k_m.gguf")))["output.weight"] == "Q6_K"
    assert sizes["q4_0"] < sizes["q5_k_m"] < sizes["q6_k"] < sizes["q8_0"] < sizes["f16"]
    assert sizes["q4_k_m"] < sizes["q5_k_m"]
    # llama.cpp's quantizer keeps the template and special ids: the q4_k_m chat prompt is llama2ft-chat's
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(wide))
    reader = gguf.GGUFReader(str(tmp_path / "wide.q4_k_m.gguf"))
    assert field(reader, "tokenizer.chat_template") == tok.chat_template
    assert field(reader, "tokenizer.ggml.add_bos_token") is True and field(reader, "tokenizer.ggml.bos_token_id") == 1
    chat = ChatModel(None, tok, get_template("llama2_inst", RUN_SYSTEM), 256, "t")
    assert_prompts_and_answers_alike(chat, llama(tmp_path / "wide.q4_k_m.gguf", vocab_only=True), answers=False)
    # rows of 128: llama.cpp's own fallback (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0)
    for quant, kind in (("q4_k_m", "Q5_0"), ("q5_k_m", "Q5_1"), ("q6_k", "Q8_0")):
        types = quant_types(export_ok(narrow, tmp_path / f"narrow.{quant}.gguf", f"quant={quant}", "modelfile=false"))
        assert types["blk.0.attn_k.weight"] == kind, quant
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_a_failed_quantization_leaves_nothing(tmp_path, monkeypatch):
    import llama2ft.export as export_mod
    from llama2ft.core.errors import UserError

    folder = random_llama(tmp_path / "m", TOKENIZERS["embedded"], "human_assistant", None, width=128)

    def fail(*args):
        raise UserError("llama.cpp could not quantize (planted)")

    monkeypatch.setattr(export_mod, "quantize", fail)
    res = export(folder, folder / "m.q4_k_m.gguf", "quant=q4_k_m")
    assert res.returncode == 2 and "planted" in res.stderr
    assert not [p for p in folder.iterdir() if "gguf" in p.name or "Modelfile" in p.name]


def test_modelfile_beside_the_gguf(tmp_path):
    from transformers import AutoTokenizer

    llama2 = random_llama(tmp_path / "inst", TOKENIZERS["embedded"], "llama2_inst", RUN_SYSTEM, width=128)
    export_ok(llama2, tmp_path / "chat.f16.gguf", "quant=f16")
    text = (tmp_path / "chat.f16.Modelfile").read_text(encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(llama2))
    template = ollama_template(get_template("llama2_inst", RUN_SYSTEM), tok.bos_token, tok.eos_token)
    s = Sampling()
    for line in ("FROM ./chat.f16.gguf", f'TEMPLATE """{template}"""', f'SYSTEM """{RUN_SYSTEM}"""',
                 'PARAMETER stop "</s>"', f"PARAMETER temperature {s.temperature}", f"PARAMETER top_p {s.top_p}",
                 f"PARAMETER top_k {s.top_k}", f"PARAMETER repeat_penalty {s.repetition_penalty}",
                 f"PARAMETER num_predict {s.max_new_tokens}", "PARAMETER num_ctx 256"):
        assert line in text, line
    plain = random_llama(tmp_path / "ha", TOKENIZERS["embedded"], "human_assistant", RUN_SYSTEM, width=128)
    export_ok(plain, tmp_path / "ha.f16.gguf", "quant=f16")
    assert "SYSTEM" not in (tmp_path / "ha.f16.Modelfile").read_text(encoding="utf-8")  # human_assistant has none
    res = export(plain, tmp_path / "ha.f16.gguf", "quant=f16")  # exists: nothing replaced
    assert res.returncode == 2 and "already exists" in res.stderr


@pytest.mark.parametrize("saved_by", ["llama2ft", "stock"])
def test_space_prefix_is_what_the_tokenizer_does(tmp_path, saved_by):
    """Folders saved by llama2ft and by stock transformers 5 (whose real Llama-2 tokenizer reloads with
    Metaspace `prepend_scheme: first`): llama.cpp tokenizes a typed text as transformers does."""
    from transformers import AutoTokenizer

    llama_cpp_texts = ["Human: 你好", "Hello world", "数字 680 的中文读法是什么？", "12345 and 678"]
    for kind, path in TOKENIZERS.items():
        folder = random_llama(tmp_path / kind, path, "human_assistant", None, width=128, saved_by=saved_by)
        tok = AutoTokenizer.from_pretrained(str(folder))
        reader = export_ok(folder, tmp_path / f"{kind}.gguf", "quant=f16", "modelfile=false")
        assert field(reader, "tokenizer.ggml.add_space_prefix") is (kind == "llama2"), kind
        llm = llama(tmp_path / f"{kind}.gguf", vocab_only=True)
        for text in llama_cpp_texts:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == \
                tok(text, add_special_tokens=False)["input_ids"], (kind, text)
