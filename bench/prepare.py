"""The data step at scale: llama2ft's tokenization, masking and Arrow writing of N community-format rows
against the fast tokenizer's bare batched encoding of the same texts, measured in the same run.

    .venv/bin/python bench/prepare.py                           # 1,000,000 rows, the real Llama-2 tokenizer
    .venv/bin/python bench/prepare.py --rows 100000 --packing
    .venv/bin/python bench/prepare.py --data ../shared/data/dev_sft.csv --rows 200000

Rows: multi-turn dialogues of 1-8 exchanges drawn (seeded) from the project's sample task, or the rows of
--data repeated to N. The data step (`llama2ft.data.pipeline.prepare_data`, no cache entry yet) runs in a
child process, so its peak RSS is its own; then again, to time loading the cached entry. The baseline
streams the same csv and times only `tokenizer(batch, add_special_tokens=False)` on batches of 1024 cells.
Also times the input's fingerprint (`llama2ft.data.cache.file_digest`, the sha256 a run's provenance.json
and the cache key share; read once per run), the file in the page cache as the data step just left it.
Last line, JSON: rows, tokens, seconds, time_over_raw_tokenize, peak_rss_mb (+ raw and cached seconds,
hash_seconds, hash_over_data_step).
Targets at one million rows on 2 CPU cores: time_over_raw_tokenize <= 1.5, peak_rss_mb <= 2000.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REAL_TOKENIZER = ROOT.parent / "shared" / "data" / "llama2-tokenizer"


def build_rows(path: Path, rows: int, source: Path, seed: int = 0) -> None:
    """Write `rows` community-format rows: from `source` cells (repeated), or multi-turn dialogues made
    of the sample task's exchanges when `source` is the sample file."""
    from llama2ft.data.csv_reader import read_column

    cells = [cell for _, cell in read_column(source)]
    sample = source.resolve() == (ROOT / "data" / "sample" / "train.csv").resolve()
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        for i in range(rows):
            writer.writerow(["".join(rng.choice(cells) for _ in range(rng.randint(1, 8))) if sample
                             else cells[i % len(cells)]])


def data_settings(train_file: Path, cache_dir: Path, args: argparse.Namespace) -> SimpleNamespace:
    return SimpleNamespace(train_file=str(train_file), eval_file=None, eval_fraction=0.0, text_column="text",
                           encoding=None, max_seq_len=args.max_seq_len, format="dialogue", train_on_inputs=False,
                           skip_bad_rows=False, packing=args.packing, group_by_length=not args.packing, cache=True,
                           cache_dir=str(cache_dir), preview_rows=5)


def child(args: argparse.Namespace) -> None:
    """The data step alone (run as a child process); prints its seconds and statistics as JSON."""
    from llama2ft.data.pipeline import prepare_data
    from llama2ft.data.templates import get_template
    from llama2ft.model.loading import open_tokenizer

    tok = open_tokenizer(args.tokenizer, need_bos_eos=True)
    started = time.perf_counter()
    prepared = prepare_data(data_settings(Path(args.csv), Path(args.cache), args), get_template("human_assistant"),
                            tok, seed=42)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "stats": prepared.stats, "rows_on_disk": prepared.train.num_rows}))


def raw_tokenize(csv_path: Path, tokenizer: str) -> tuple[float, int]:
    """Seconds spent in the fast tokenizer's batched call on the csv's cells, and the tokens it made."""
    from llama2ft.data.csv_reader import iter_column
    from llama2ft.model.loading import open_tokenizer

    tok = open_tokenizer(tokenizer)
    seconds, tokens, batch = 0.0, 0, []

    def encode() -> None:
        nonlocal seconds, tokens
        started = time.perf_counter()
        ids = tok(batch, add_special_tokens=False)["input_ids"]
        seconds += time.perf_counter() - started
        tokens += sum(map(len, ids))
        batch.clear()

    for _, cell in iter_column(csv_path):
        batch.append(cell)
        if len(batch) >= 1024:
            encode()
    if batch:
        encode()
    return seconds, tokens


def hash_seconds(csv_path: Path) -> float:
    """Seconds of one fingerprint of the file (sha256 of its bytes), as a run computes it."""
    from llama2ft.data.cache import file_digest, forget_digests

    forget_digests()
    started = time.perf_counter()
    file_digest(str(csv_path))
    return time.perf_counter() - started


def run_child(args: argparse.Namespace, csv_path: Path, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--csv", str(csv_path), "--cache", str(cache),
           "--tokenizer", args.tokenizer, "--max-seq-len", str(args.max_seq_len), *(["--packing"] if args.packing else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "sample" / "train.csv",
                    help="community-format csv whose rows are repeated (default: dialogues built from the sample task)")
    ap.add_argument("--tokenizer", default=str(REAL_TOKENIZER))
    ap.add_argument("--max-seq-len", type=int, default=4096)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/llama2ft-bench-prepare"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--csv", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import shutil

    args.work.mkdir(parents=True, exist_ok=True)
    csv_path = args.work / f"rows-{args.rows}-{args.data.stem}.csv"
    if not csv_path.is_file():
        print(f"writing {args.rows:,} rows to {csv_path}", flush=True)
        build_rows(csv_path, args.rows, args.data)
    cache = args.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    print("data step (child process) ...", flush=True)
    first = run_child(args, csv_path, cache)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    cached = run_child(args, csv_path, cache)
    print("bare batched tokenization of the same texts ...", flush=True)
    raw_seconds, raw_tokens = raw_tokenize(csv_path, args.tokenizer)
    hashed = hash_seconds(csv_path)
    stats = first["stats"]
    print(f"data step: {first['seconds']:.1f} s, {stats['rows']:,} rows, {stats['tokens']:,} tokens "
          f"({stats['truncated_rows']} truncated), peak RSS {peak_rss_mb:.0f} MB; cached load {cached['seconds']:.2f} s")
    print(f"raw tokenize: {raw_seconds:.1f} s, {raw_tokens:,} tokens (the markup's literal <s></s> included)")
    print(f"fingerprint: sha256 of {csv_path.stat().st_size / 1e6:.0f} MB in {hashed:.2f} s, "
          f"{hashed / first['seconds']:.2%} of the data step")
    print(json.dumps({"rows": stats["rows"], "tokens": stats["tokens"], "seconds": round(first["seconds"], 1),
                      "time_over_raw_tokenize": round(first["seconds"] / raw_seconds, 3),
                      "peak_rss_mb": round(peak_rss_mb), "raw_tokenize_seconds": round(raw_seconds, 1),
                      "cached_load_seconds": round(cached["seconds"], 2), "hash_seconds": round(hashed, 2),
                      "hash_over_data_step": round(hashed / first["seconds"], 4), "packing": args.packing,
                      "max_seq_len": args.max_seq_len, "data": str(args.data)}))


if __name__ == "__main__":
    main()
