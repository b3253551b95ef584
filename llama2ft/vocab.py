"""llama2ft-vocab: learn Chinese pieces from a corpus and append them to a Llama tokenizer.

    llama2ft-vocab corpus=data/sample/train.csv vocab_size=2304 output=outputs/vocab/zh-2304
    llama2ft-vocab corpus=zh.txt base=/models/Llama-2-7b-hf vocab_size=49984 heldout=dev.csv output=zh-llama

A byte-level-fallback BPE (the `tokenizers` library) is trained on the runs of Chinese characters of
the corpus; its characters and merges are appended to the base tokenizer's BPE model with new ids after
the existing ones, so no existing piece changes id. `vocab_size` is the new total size. The extended
folder is checked (old ids unchanged, Chinese text round-trips) before it appears, and loads with
`AutoTokenizer.from_pretrained`. Train with it via `model.tokenizer=DIR`: the model's embeddings and
head grow to match (see README, "Chinese vocabulary extension").
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from llama2ft.config.hydra_app import hydra_command
from llama2ft.core.errors import ConfigError, DataError, UserError
from llama2ft.core.files import atomic_dir
from llama2ft.core.text import CJK_RUN
from llama2ft.model.loading import save_tokenizer
from llama2ft.data.vocab_extension import (REPORT, check_extension, check_joined_runs, chinese_runs, corpus_texts,
                                           extend_spec, learn_pieces, open_base, tokens_per_char)


def check_settings(cfg: DictConfig) -> None:
    """Every problem with the settings at once (types are checked by the schema)."""
    problems = []
    if not cfg.corpus:
        problems.append("corpus=PATH is required (a .txt file or a .csv with a `column` of text)")
    if not cfg.output:
        problems.append("output=DIR is required")
    if cfg.vocab_size is None:
        problems.append("vocab_size=N is required: the new total number of pieces")
    if cfg.min_frequency < 1:
        problems.append(f"min_frequency={cfg.min_frequency!r}: must be an integer >= 1")
    if cfg.max_piece_length is not None and cfg.max_piece_length < 2:
        problems.append(f"max_piece_length={cfg.max_piece_length!r}: must be an integer >= 2 (or null: no limit)")
    if problems:
        raise ConfigError(problems)


def run_vocab(cfg: DictConfig) -> Path:
    """Build the extended tokenizer folder `cfg.output`; returns its path."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    check_settings(cfg)
    output = Path(cfg.output).expanduser().resolve()
    if output.exists() and not cfg.overwrite:
        raise UserError(f"{output} already exists; pass overwrite=true to replace it")
    base_tok, spec = open_base(str(cfg.base))
    base_size = len(base_tok)
    if cfg.vocab_size <= base_size:
        raise UserError(f"vocab_size={cfg.vocab_size} must be larger than the {base_size} pieces of the base "
                        f"tokenizer {cfg.base} (it is the new total size, not the number of pieces to add)")
    texts = corpus_texts(str(cfg.corpus), cfg.column, cfg.encoding)
    heldout = corpus_texts(str(cfg.heldout), cfg.column, cfg.encoding) if cfg.heldout else []
    runs = chinese_runs(texts)
    if not runs:
        raise DataError(f"{cfg.corpus} has no Chinese characters to learn pieces from")

    started = time.time()
    base_spec = json.loads(json.dumps(spec))  # extend_spec changes `spec` in place
    vocab = spec["model"]["vocab"]
    existing = sum(1 for p in vocab if len(p) > 1 and CJK_RUN.fullmatch(p))  # merges that may add nothing new
    chars, merges = learn_pieces(runs, cfg.vocab_size - base_size + existing, cfg.min_frequency,
                                 cfg.max_piece_length)
    added, joined = extend_spec(spec, chars, merges, cfg.vocab_size)
    new_chars = sum(1 for p, i in vocab.items() if i >= base_size and len(p) == 1)

    with atomic_dir(output, exists="replace" if cfg.overwrite else "error") as tmp:
        save_tokenizer(base_tok, tmp)
        Tokenizer.from_str(json.dumps(spec, ensure_ascii=False)).save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer.model").unlink(missing_ok=True)  # a sentencepiece model would lack the new pieces
        ext_tok = AutoTokenizer.from_pretrained(str(tmp))
        sample = texts[:5000]  # figures and checks on a bounded sample of a large corpus
        exact = check_extension(base_tok, ext_tok, spec, sample + heldout)
        if joined:
            check_joined_runs(base_tok, base_spec, sample + heldout)
        figures = {"corpus": [tokens_per_char(base_tok, sample), tokens_per_char(ext_tok, sample)]}
        if heldout:
            figures["heldout"] = [tokens_per_char(base_tok, heldout), tokens_per_char(ext_tok, heldout)]
        report = {"base": str(cfg.base), "base_size": base_size, "size": len(ext_tok), "added": added,
                  "added_characters": new_chars, "corpus": str(cfg.corpus), "heldout": cfg.heldout,
                  "min_frequency": cfg.min_frequency, "max_piece_length": cfg.max_piece_length,
                  "cjk_runs_joined": joined, "texts_checked": len(sample + heldout), "round_trip_exact": exact,
                  "tokens_per_char": {k: {"before": round(b, 4), "after": round(a, 4)}
                                      for k, (b, a) in figures.items()}}
        (tmp / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _print_report(cfg, report, figures, len(sample), len(heldout), time.time() - started)
    print(f"wrote {output} (train with model.tokenizer={output})", flush=True)
    return output


def _print_report(cfg: DictConfig, report: dict, figures: dict, n_sample: int, n_heldout: int, secs: float) -> None:
    added, size = report["added"], report["size"]
    print(f"base {cfg.base}: {report['base_size']} pieces -> {size} (+{added}: {report['added_characters']} "
          f"characters, {added - report['added_characters']} multi-character pieces) in {secs:.1f} s", flush=True)
    if size < cfg.vocab_size:
        print(f"note: the corpus yields only {added} new pieces with min_frequency={cfg.min_frequency}: "
              f"{size} pieces, fewer than vocab_size={cfg.vocab_size}", flush=True)
    if report["cjk_runs_joined"]:
        print("the base pre-tokenizer isolated every Chinese character; it now isolates runs of them "
              "(the old merges encode as before)", flush=True)
    print(f"ids of all {report['base_size']} existing pieces unchanged; {report['round_trip_exact']} of "
          f"{report['texts_checked']} texts round-trip exactly (none fewer than with the base)", flush=True)
    print("tokens per character      before   after   change", flush=True)
    names = {"corpus": f"corpus ({n_sample} texts)", "heldout": f"held-out ({n_heldout} texts)"}
    for key, (before, after) in figures.items():
        print(f"  {names[key]:<22} {before:7.3f} {after:7.3f}  {after / before - 1:+7.1%}", flush=True)


main = hydra_command("vocab", run_vocab, from_store=True)

if __name__ == "__main__":
    sys.exit(main())
