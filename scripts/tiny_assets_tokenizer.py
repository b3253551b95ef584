"""The tiny byte-fallback BPE tokenizer: training text, training, saving and checking.

Helper of ``build_tiny_assets.py`` (which documents the tokenizer); the ``tokenizers`` and
``transformers`` imports stay inside the functions, as in the script, so importing this is cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiny_assets_corpus import COMMON_CHARS, GENERAL_EN, GENERAL_MIXED, GENERAL_ZH

VOCAB_SIZE = 2048  # multiple of 32 (BPE merges + characters fill it exactly, see build_tokenizer)
SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
# CJK ideographs (Oniguruma syntax: a Python "\\U..." escape would silently corrupt the class)
CJK = r"[\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{2FA1F}]"


def general_text(rows: list[str]) -> list[str]:
    """Tokenizer training lines: the general text plus the task rows."""
    lines = GENERAL_ZH.splitlines() + GENERAL_EN.splitlines() + GENERAL_MIXED.splitlines()
    # the task rows themselves (special tokens stripped; BPE never merges across them anyway)
    lines += [r.replace("<s>", "").replace("</s>", "") for r in rows]
    return lines


def extra_chars(lines: list[str], n: int) -> list[str]:
    """n frequent characters (from COMMON_CHARS, in order) that ``lines`` lacks, 40 per line.

    Each appears once, so with min_frequency=2 they add alphabet symbols but no merges."""
    seen = set("".join(lines))
    extra = [c for c in dict.fromkeys(COMMON_CHARS) if c not in seen][: max(0, n)]
    return ["".join(extra[i : i + 40]) for i in range(0, len(extra), 40)]


def _train_bpe(lines: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Like Llama (SentencePiece): spaces become "▁" and stay attached to the next word,
    # but no "▁" is prepended to the text (so enc(a) + enc(b) == enc(a + b) at the
    # boundaries the framework uses) and no Unicode normalisation (NFKC would turn
    # "？" into "?" and break exact round trips).
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CJK), "isolated"),  # one token per CJK character
            pre_tokenizers.Split(Regex(r"[\n\r\t]"), "isolated"),
            pre_tokenizers.Digits(individual_digits=True),  # one token per digit
            pre_tokenizers.Split("▁", "merged_with_next"),
        ]
    )
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS + BYTE_TOKENS,  # ids 0,1,2 then <0x00>.. at 3..258
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def build_tokenizer(lines: list[str], vocab_size: int = VOCAB_SIZE):
    from tokenizers import processors

    # Pass 1 finds how many merges the text supports (BPE stops when no pair occurs
    # twice); pass 2 fills the remaining slots with frequent Chinese characters so
    # the vocabulary is exactly vocab_size and everyday Chinese rarely needs bytes.
    first = _train_bpe(lines, vocab_size)
    tok = _train_bpe(lines + extra_chars(lines, vocab_size - first.get_vocab_size()), vocab_size)
    size = tok.get_vocab_size()
    if size % 32:  # safety net only; not hit with the shipped text
        tok.add_special_tokens([f"<reserved_{i}>" for i in range(32 - size % 32)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    return _bytes_as_plain_vocab(tok)


def _bytes_as_plain_vocab(tok):
    """BpeTrainer only reserves ids through `special_tokens`, which also makes the byte tokens *added
    special* tokens; then `decode(..., skip_special_tokens=True)` drops every byte-fallback character.
    As in Llama's tokenizer, keep them as ordinary vocabulary entries (same ids)."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    data["added_tokens"] = [a for a in data["added_tokens"] if a["content"] not in BYTE_TOKENS]
    return Tokenizer.from_str(json.dumps(data))


def save_tokenizer(tok, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    # BOS comes from the TemplateProcessing post-processor stored in tokenizer.json.
    # (transformers 5 ignores add_bos_token/add_eos_token in tokenizer_config.json when a
    # tokenizer.json exists and drops them on save, so they are not written.)
    hf.save_pretrained(str(out))


def check_tokenizer(path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2], "special ids"
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.unk_token_id == 0
    assert len(tok) % 32 == 0, len(tok)
    assert tok("你好")["input_ids"][0] == 1, "BOS must be added with add_special_tokens=True"
    assert tok("你好", add_special_tokens=False)["input_ids"][0] != 1
    assert tok.encode("<s>", add_special_tokens=False) == [1]
    assert tok.decode(tok.encode("齉", add_special_tokens=False), skip_special_tokens=True) == "齉"
    assert tok.encode("</s>", add_special_tokens=False) == [2]
    assert [tok.decode([i]) for i in tok.encode("407", add_special_tokens=False)] == ["4", "0", "7"]
    assert tok.tokenize("四百零七") == list("四百零七"), "one token per CJK character"
    # the role prefixes are single tokens (guards against a pre-tokenizer regex that splits ASCII)
    assert tok.tokenize("Human: ") == ["Human:", "▁"] and tok.tokenize("Assistant: ") == ["Assistant:", "▁"]
    samples = [
        "请用中文写出数字 407。",
        "四百零七\n",
        "Hello, world!  Two  spaces, a\ttab and\nnew lines\n\n",
        "中英混合 mixed text：LoRA 的秩是 8，学习率 2e-4？",
        "全角标点：？！，。；：“”‘’（）【】《》、……——～ ＡＢＣ１２３",
        "emoji 😀🚀✅👍🏽 and rare 龘靐齉 𠀀",
        " leading and trailing spaces ",
        "Human: 3 加 5 等于几？\nAssistant: 八\n",
    ]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False)
        back = tok.decode(ids)
        assert back == s, (s, back, ids)
    # byte fallback: a character that is certainly not in the vocab
    ids = tok.encode("齉", add_special_tokens=False)
    assert all(tok.convert_ids_to_tokens(i).startswith("<0x") for i in ids), ids
    # byte tokens are ordinary vocabulary (ids 3..258), not special: skip_special_tokens keeps them
    assert tok.convert_tokens_to_ids(["<0x00>", "<0xFF>"]) == [3, 258]
    assert tok.decode(tok.encode("<s>emoji 😀 齉</s>"), skip_special_tokens=True) == "emoji 😀 齉"

