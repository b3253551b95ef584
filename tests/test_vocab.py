"""llama2ft-vocab and training with an extended tokenizer: no existing id moves, Chinese text
round-trips, the sample data gets shorter, a Llama-style (sentencepiece) base extends too, the model
grows to the tokenizer, and train + merge + reload works; bad input gives one clear error line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose, run_app, run_cli, shared_file, train_ok
from llama2ft import CONFIG_DIR, PROJECT_ROOT
from llama2ft.core.errors import UserError

pytestmark = pytest.mark.usefixtures("app_threads")  # conftest: torch threads as run_app gives commands

SAMPLE = PROJECT_ROOT / "data" / "sample"
ROUND_TRIP = ["请用中文写出数字 4046。", "四千零四十六用阿拉伯数字怎么写？", "你好，世界！Hello, world.",
              "  前后有空格  ", "饕餮与魑魅魍魉", "表情😀和罕见字𠀀", "第一行\n第二行\t制表符", "数字 0 到 9999"]


def vocab_cfg(**overrides):
    """configs/vocab.yaml as the app sees it, with `overrides`."""
    from llama2ft.config.app_schemas import VocabConfig

    cfg = OmegaConf.load(CONFIG_DIR / "vocab.yaml")
    del cfg["defaults"], cfg["hydra"]
    return OmegaConf.merge(OmegaConf.structured(VocabConfig), cfg, overrides)


def build(tmp_path: Path, name: str = "ext", **overrides) -> Path:
    from llama2ft.vocab import run_vocab

    args = {"corpus": str(SAMPLE / "train.csv"), "heldout": str(SAMPLE / "dev.csv"), "vocab_size": 2304,
            "output": str(tmp_path / name), **overrides}
    return run_vocab(vocab_cfg(**args))


def load_tok(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("vocab"), max_piece_length=4)


def assert_extends(base, ext, size: int) -> None:
    old, new = base.get_vocab(), ext.get_vocab()
    assert all(new[piece] == i for piece, i in old.items())  # no existing id changes
    assert len(ext) == size and sorted(set(new.values()) - set(old.values())) == list(range(len(base), size))
    for text in ROUND_TRIP:
        back = ext.decode(ext.encode(text, add_special_tokens=False))
        # Llama itself drops one leading space (its prefix ▁): the extension may not lose anything more
        assert back == base.decode(base.encode(text, add_special_tokens=False))
        assert back == text or text.startswith(" ")


# ---------------------------------------------------------------- the tokenizer
def test_extension_keeps_ids_round_trips_and_shortens_the_sample_data(extended, tokenizer):
    from llama2ft.data.vocab_extension import corpus_texts, tokens_per_char

    ext = load_tok(extended)  # stock transformers loads the folder
    assert_extends(tokenizer, ext, 2304)
    assert ext.bos_token_id == 1 and ext.eos_token_id == 2 and ext("你好").input_ids[0] == 1
    assert ext.convert_ids_to_tokens(ext.encode("<s>Human: x", add_special_tokens=False))[:2] == ["<s>", "Human:"]
    dev = corpus_texts(str(SAMPLE / "dev.csv"))
    assert not any("<s>" in t or "Assistant:" in t for t in dev)  # community markup stripped
    before, after = tokens_per_char(tokenizer, dev), tokens_per_char(ext, dev)
    assert after < 0.7 * before
    assert max(len(p) for p, i in ext.get_vocab().items() if i >= 2048) == 4  # max_piece_length
    report = json.loads((extended / "vocab_extension.json").read_text(encoding="utf-8"))
    assert report["added"] == 256 and report["tokens_per_char"]["heldout"]["after"] == pytest.approx(after, abs=1e-3)
    assert not (extended.parent / ".ext.tmp").exists()


def test_a_llama_sentencepiece_tokenizer_extends_too(tmp_path):
    """A Llama-style tokenizer (sentencepiece BPE with byte fallback, LlamaTokenizer, no CJK splitting)."""
    import sentencepiece as spm
    from llama2ft.data.vocab_extension import corpus_texts

    # characters spaced apart: like Llama-2's, the base knows Chinese characters but hardly any words
    lines = [" ".join(t) for t in corpus_texts(str(SAMPLE / "train.csv"))[:400]]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\nThe quick brown fox jumps over the lazy dog.\n",
                                         encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=440, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, minloglevel=2)
    llama = tmp_path / "llama"
    llama.mkdir()
    (tmp_path / "sp.model").rename(llama / "tokenizer.model")
    (llama / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    base = load_tok(llama)
    out = build(tmp_path, base=str(llama), vocab_size=len(base) + 64, min_frequency=3)
    ext = load_tok(out)
    assert type(ext).__name__ == "LlamaTokenizer" and not (out / "tokenizer.model").exists()
    assert_extends(base, ext, len(base) + 64)
    text = "请把数字四千零四十六写成阿拉伯数字。"
    assert len(ext.encode(text)) < len(base.encode(text))


def test_new_characters_from_a_real_chinese_corpus(tmp_path, tokenizer):
    """Characters the base only spells in bytes become single pieces (community sample as corpus)."""
    corpus = shared_file("dev_sft.csv")
    out = build(tmp_path, corpus=str(corpus), heldout=None, vocab_size=2560)
    ext = load_tok(out)
    report = json.loads((out / "vocab_extension.json").read_text(encoding="utf-8"))
    assert report["added_characters"] > 0 and report["tokens_per_char"]["corpus"]["after"] < 0.9
    fresh = [p for p, i in ext.get_vocab().items() if i >= len(tokenizer) and len(p) == 1]
    assert len(tokenizer.encode(fresh[0], add_special_tokens=False)) > 1  # byte fallback before
    assert ext.encode(fresh[0], add_special_tokens=False) == [ext.convert_tokens_to_ids(fresh[0])]
    assert_extends(tokenizer, ext, report["size"])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, needle", [
    ({"vocab_size": 2048}, "must be larger than the 2048 pieces"),
    ({"vocab_size": 100}, "must be larger than the 2048 pieces"),
    ({"corpus": "EMPTY"}, "is empty"),
    ({"corpus": "ENGLISH"}, "no Chinese characters"),
    ({"corpus": "/nope/corpus.txt"}, "file not found"),
    ({"corpus": None}, "corpus=PATH is required"),
    ({"max_piece_length": 1}, "max_piece_length=1: must be an integer >= 2"),
    ({"base": "/nope/tokenizer"}, "base='/nope/tokenizer': folder not found"),
    ({"base": str(SAMPLE)}, "no tokenizer.json or tokenizer.model in this folder"),
    ({"column": "question"}, "has no column 'question'; columns found: 'text' \\(set column=...\\)"),
])
def test_bad_input_is_one_clear_error(tmp_path, overrides, needle):
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    (tmp_path / "english.txt").write_text("only English here\n", encoding="utf-8")
    files = {"EMPTY": str(tmp_path / "empty.txt"), "ENGLISH": str(tmp_path / "english.txt")}
    overrides = {k: files.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(UserError, match=needle):
        build(tmp_path, **overrides)
    assert not (tmp_path / "ext").exists()


def test_wrong_types_are_rejected_by_the_schema():
    from omegaconf.errors import ValidationError

    for key, value in (("vocab_size", "big"), ("min_frequency", "often"), ("overwrite", "maybe")):
        with pytest.raises(ValidationError, match=key):
            vocab_cfg(**{key: value})


def test_existing_output_needs_overwrite(extended, tmp_path):
    with pytest.raises(UserError, match="already exists; pass overwrite=true"):
        build(extended.parent, name=extended.name)
    out = build(tmp_path, vocab_size=2112)
    assert len(load_tok(build(tmp_path, vocab_size=2176, overwrite=True))) == 2176 and out.is_dir()


def test_killed_before_publishing_keeps_the_old_output(extended, tmp_path):
    """kill -9 with the new tokenizer complete but not yet renamed into place: the existing output is
    untouched, and the next run replaces it (clearing the dead run's temporary folder)."""
    import shutil

    out = tmp_path / "ext"
    shutil.copytree(extended, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = [f"corpus={SAMPLE / 'train.csv'}", "vocab_size=2176", f"output={out}", "overwrite=true"]
    # a process of its own: it SIGKILLs itself
    res = run_cli("vocab", *args, env={"OMP_NUM_THREADS": "1", "LLAMA2FT_KILL_AT": "before-publish"})
    assert res.returncode == -9, res.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ext.tmp-")]
    res = run_app("vocab", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(load_tok(out)) == 2176 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_errors_without_traceback(tmp_path):
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    for args, needle in ([f"corpus={tmp_path / 'empty.csv'}", "vocab_size=4096"], "is empty"), \
                        ([f"corpus={SAMPLE / 'train.csv'}", "vocab_size=1000"], "must be larger than"):
        res = run_app("vocab", *args, f"output={tmp_path / 'out'}")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0], res.stderr


# ---------------------------------------------------------------- the model side
def test_resize_grows_embeddings_and_head_with_mean_rows():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama2ft.model.embeddings import embedding_module_names, resize_embeddings

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    old = model.get_input_embeddings().weight.detach().clone()
    old_head = model.get_output_embeddings().weight.detach().clone()
    assert resize_embeddings(model, 64, "mean") is None and resize_embeddings(model, 10, "mean") is None
    assert resize_embeddings(model, 70, "mean") == (64, 96)  # rounded up to a multiple of 32
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == model.config.vocab_size == 96
    assert torch.equal(emb[:64], old) and torch.equal(head[:64], old_head)
    assert torch.allclose(emb[64:], old.mean(0).expand(32, -1), atol=1e-3)
    assert torch.allclose(head[64:], old_head.mean(0).expand(32, -1), atol=1e-3)
    assert embedding_module_names(model) == ["embed_tokens", "lm_head"]


def test_resize_init_is_checked():
    from llama2ft.config.validation import collect_problems

    assert not collect_problems(compose(["model.resize_init=normal"]))
    assert any("model.resize_init='zero'" in p for p in collect_problems(compose(["model.resize_init=zero"])))


@pytest.mark.slow
def test_pretrain_raw_then_sft_then_merge_with_an_extended_vocabulary(extended, tmp_path, tokenizer):
    """Base with the old vocabulary -> raw continued pre-training (embeddings resized and trained) -> merge
    -> SFT on the merged model -> merge -> stock transformers loads model and tokenizer together."""
    from transformers import AutoModelForCausalLM

    from llama2ft.model.tiny import build_tiny_base

    base = Path(build_tiny_base(compose().model.init, tokenizer, tmp_path / "base"))

    def train(run: Path, *overrides: str) -> str:
        return train_ok(run, "experiment=tiny_smoke", *overrides)

    def merge(run: Path, out: Path) -> None:
        res = run_app("merge", f"run={run}", f"output={out}", "dtype=float32")
        assert res.returncode == 0 and "verified" in res.stdout, res.stderr[-3000:]

    out = train(tmp_path / "pt", f"model.name_or_path={base}", f"model.tokenizer={extended}", "data.format=raw",
                "lora.modules_to_save=[]")
    assert "embeddings and head resized to 2304 rows" in out
    assert "lora.modules_to_save += ['embed_tokens', 'lm_head']" in out
    chat = run_app("chat", f"run={tmp_path / 'pt'}", "prompt='数字'", "max_new_tokens=4", "temperature=0")
    assert chat.returncode == 0, chat.stderr[-2000:]  # the adapter's 2304-row embeddings load on the 2048-row base
    merge(tmp_path / "pt", tmp_path / "pt-merged")
    emb = AutoModelForCausalLM.from_pretrained(str(tmp_path / "pt-merged")).get_input_embeddings().weight
    new_ids = load_tok(extended).convert_tokens_to_ids(["数字", "中文", "写出"])  # new pieces
    assert min(new_ids) >= 2048 and emb.shape[0] == 2304
    assert float((emb[new_ids] - emb[2048:].mean(0)).abs().max().detach()) > 1e-3  # the new rows trained

    out = train(tmp_path / "sft", f"model.name_or_path={tmp_path / 'pt-merged'}", "model.tokenizer=null")
    assert "resized" not in out  # the merged model already has the rows
    merge(tmp_path / "sft", tmp_path / "published")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "published"))
    tok = load_tok(tmp_path / "published")
    assert len(tok) == model.get_input_embeddings().weight.shape[0] == model.config.vocab_size == 2304
    ids = tok("<s>Human: 请用中文写出数字 407。\n</s><s>Assistant: ", add_special_tokens=False,
              return_tensors="pt").input_ids
    assert int(ids.max()) >= 2048 and "请用中文" in tok.convert_ids_to_tokens(ids[0])  # new pieces in use
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids.shape[1] and int(generated.max()) < 2304
