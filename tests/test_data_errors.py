"""Bad input gets one clear message naming the file and row, a non-zero exit and no traceback,
before any model is loaded; valid-but-unusual files just work."""
from __future__ import annotations

import json

import pytest

from conftest import compose, run_app
from llama2ft.core.errors import DataError
from llama2ft.data.pipeline import check_inputs, prepare_data
from llama2ft.data.templates import get_template

GOOD = "<s>Human: 你好\n</s><s>Assistant: 你好！\n</s>"


def write_csv(path, rows, header="text", encoding="utf-8", bom=False):
    def cell(r):
        return '"' + r.replace('"', '""') + '"'
    body = header + "\n" + "".join(cell(r) + "\n" for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode(encoding))
    return path


def data_cfg(path, *extra):
    return compose(["data=csv", f"data.train_file={path}", "data.eval_fraction=0", *extra])


def prepare(cfg, tokenizer):
    template = get_template(cfg.template.name, cfg.template.system)
    return prepare_data(cfg.data, template, tokenizer, cfg.trainer.seed)


CASES = {
    "empty file": (lambda p: p.write_bytes(b""), "is empty"),
    "header only": (lambda p: p.write_text("text\n"), "no data rows"),
    "missing column": (lambda p: p.write_text('question,answer\n"a","b"\n'), "has no column 'text'; columns found: "
                                                                           "'question', 'answer'"),
    "empty cell": (lambda p: write_csv(p, [GOOD, ""]), "row 2"),
    "not the dialogue format": (lambda p: write_csv(p, [GOOD, "just some text"]), "row 2"),
    "starts with Assistant": (lambda p: write_csv(p, ["<s>Assistant: 你好\n</s><s>Human: 嗨\n</s>"]),
                              "row 1: dialogue starts with an Assistant turn"),
    "malformed quoting": (lambda p: p.write_text('text\n"<s>Human: a\n</s>" oops\n'), "(row 1): malformed csv"),
    "binary": (lambda p: p.write_bytes(b"PK\x03\x04\x00\x00binary\x00stuff"), "not a text csv"),
    "gbk": (lambda p: write_csv(p, [GOOD], encoding="gbk"), "data.encoding=gbk"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_file_and_what(tmp_path, case):
    make, needle = CASES[case]
    path = tmp_path / "bad.csv"
    make(path)
    with pytest.raises(DataError) as info:
        check_inputs(data_cfg(path).data, 0)
    message = str(info.value)
    assert str(path) in message and needle in message, message


def test_skip_bad_rows_counts_them(tmp_path, tokenizer):
    path = write_csv(tmp_path / "mixed.csv", [GOOD, "", "garbage", GOOD])
    prepared = prepare(data_cfg(path, "data.skip_bad_rows=true"), tokenizer)
    assert prepared.stats["rows"] == 2 and prepared.stats["rows_skipped"] == 2


def test_gbk_decodes_when_told(tmp_path, tokenizer):
    path = write_csv(tmp_path / "gbk.csv", [GOOD], encoding="gbk")
    prepared = prepare(data_cfg(path, "data.encoding=gbk"), tokenizer)
    assert prepared.stats["rows"] == 1 and "你好！" in tokenizer.decode(prepared.train[0]["input_ids"])


def test_bom_extra_columns_and_long_rows_just_work(tmp_path, tokenizer):
    long_answer = "长" * 400_000
    rows = [GOOD, f"<s>Human: 写长文\n</s><s>Assistant: {long_answer}\n</s>"]
    body = "id,text,source\n" + "".join(f'{i},"{r}",web\n' for i, r in enumerate(rows))
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    stats = prepare(data_cfg(path, "data.max_seq_len=64"), tokenizer).stats
    assert stats["rows"] == 2 and stats["truncated_rows"] == 1 and stats["max_len"] == 64


def test_prepare_cli_writes_stats(tmp_path):
    res = run_app("prepare", f"hydra.run.dir={tmp_path}/run")
    assert res.returncode == 0, res.stderr
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    for key in ("rows", "rows_skipped", "turns", "tokens", "trained_tokens", "truncated_rows", "max_len"):
        assert key in stats
    assert stats["rows"] > 100 and stats["eval"]["rows"] > 10
    assert 0 < stats["trained_tokens"] < stats["tokens"]
    assert "data:" in res.stdout


@pytest.mark.parametrize("case", ["missing", "gbk", "bad row"])
def test_cli_bad_input_one_line_no_traceback(tmp_path, case):
    path = tmp_path / "train.csv"
    if case == "gbk":
        write_csv(path, [GOOD], encoding="gbk")
    elif case == "bad row":
        write_csv(path, [GOOD, GOOD, "<s>Human: 没有回答\n</s>"])
    res = run_app("train", "data=csv", f"data.train_file={path}", f"hydra.run.dir={tmp_path}/run")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in res.stderr, res.stderr
    if case == "bad row":
        assert "row 3" in errors[0]
    assert not (tmp_path / "run" / "base_model").exists()  # failed before any model was built
