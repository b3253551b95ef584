"""Bad json/jsonl/parquet/dataset files give one clear error naming the file and the line or row; several
train files with weights enter an epoch as many times as their weight says; the cache follows contents."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from conftest import compose, run_app
from llama2ft.config.validation import collect_problems
from llama2ft.core.errors import DataError
from llama2ft.data.pipeline import check_inputs, prepare_data
from llama2ft.data.preview import describe_first, write_preview
from llama2ft.data.templates import get_template

GOOD = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}]}


def lines(*objects):
    return "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objects)


def chat(*messages):
    return {"messages": [{"role": r, "content": c} for r, c in messages]}


CASES = {  # name: (file name, contents, what the one error line must say)
    "malformed json line 7": ("a.jsonl", lines(*[GOOD] * 6, '{"conversations": [oops]}'), "line 7: malformed JSON"),
    "malformed json array": ("a.json", "[\n" + json.dumps(GOOD) + ",\n{\"messages\": \n]",
                             "line 4: malformed JSON (Expecting value"),
    "array never closed": ("a.json", "[" + json.dumps(GOOD), "never closed"),
    "one object": ("a.json", json.dumps(GOOD, indent=1), "one JSON object"),
    "not an object": ("a.jsonl", lines(GOOD, [1, 2]), "line 2: expected a JSON object"),
    "no known shape": ("a.jsonl", lines(GOOD, {"question": "q", "answer": "a"}),
                       "line 2: an object with none of the known shapes (fields: 'question', 'answer')"),
    "unknown role": ("a.jsonl", lines(chat(("user", "q"), ("tool", "x"))),
                     "line 1: messages[1] has unknown role 'tool'"),
    "roles out of order": ("a.jsonl", lines(chat(("user", "q"), ("user", "q2"), ("assistant", "a"))),
                           "line 1: roles out of order: messages[1]"),
    "answer first": ("a.json", json.dumps([{"conversations": [{"from": "gpt", "value": "a"}]}]),
                     "row 1 (line 1): roles out of order"),
    "late system": ("a.jsonl", lines(chat(("user", "q"), ("system", "s"), ("assistant", "a"))),
                    "messages[1] is a system message after the first"),
    "empty answer": ("a.jsonl", lines(GOOD, {"instruction": "问", "input": "", "output": " "}),
                     "line 2: empty answer in 'output'"),
    "no answer": ("a.jsonl", lines(chat(("system", "s"), ("user", "q"))), "no answer"),
    "marker in text": ("a.jsonl", lines(chat(("user", "q</s>"), ("assistant", "a"))), "contains '</s>'"),
    "image content": ("a.jsonl", lines(chat(("user", [{"type": "image_url"}]), ("assistant", "a"))),
                      "type 'image_url'"),
    "bad community cell": ("a.jsonl", lines({"text": "just text"}), "line 1: no <s>...</s> blocks"),
    "empty jsonl": ("a.jsonl", "\n\n", "is empty"),
    "unknown suffix": ("a.txt", "hello", "unknown file type '.txt'"),
    "not utf-8": ("a.jsonl", "", "not valid UTF-8"),
    "not parquet": ("a.parquet", "PAR1 not really", "cannot be read as parquet"),
}


def make(tmp_path, case):
    name, body, _ = CASES[case]
    path = tmp_path / name
    if case == "not utf-8":
        path.write_bytes(json.dumps({"text": "你好"}, ensure_ascii=False).encode("gbk") + b"\n")
    else:
        path.write_text(body, encoding="utf-8")
    return path


def data_cfg(path, *extra):
    return compose(["data=csv", f"data.train_file={path}", "data.eval_fraction=0", "data.cache=false", *extra])


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_names_file_and_where(tmp_path, case):
    path = make(tmp_path, case)
    with pytest.raises(DataError) as info:
        check_inputs(data_cfg(path).data, 0)
    message = str(info.value)
    assert message.startswith(str(path)) and CASES[case][2] in message and "\n" not in message, message


def test_dataset_dict_folder_and_forced_shape(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([GOOD]), "test": Dataset.from_list([GOOD])}).save_to_disk(tmp_path / "dd")
    with pytest.raises(DataError, match=r"DatasetDict \(splits: test, train\); point .* at one split"):
        check_inputs(data_cfg(tmp_path / "dd").data, 0)
    path = tmp_path / "a.jsonl"
    path.write_text(lines(GOOD), encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: no 'messages' field \(data.format=openai\)"):
        check_inputs(data_cfg(path, "data.format=openai").data, 0)


def test_skip_bad_rows_skips_json_lines(tmp_path, tokenizer):
    path = tmp_path / "a.jsonl"
    path.write_text(lines(GOOD, "{oops", {"x": 1}, chat(("user", "q"), ("assistant", "")), GOOD), encoding="utf-8")
    cfg = data_cfg(path, "data.skip_bad_rows=true")
    prepared = prepare_data(cfg.data, get_template("human_assistant"), tokenizer, 0)
    assert prepared.stats["rows"] == 2 and prepared.stats["rows_skipped"] == 3


def test_cli_bad_jsonl_one_line_before_the_model(tmp_path):
    path = make(tmp_path, "malformed json line 7")
    res = run_app("train", "data=csv", f"data.train_file={path}", f"hydra.run.dir={tmp_path}/run")
    assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{path} line 7: malformed JSON" in errors[0], res.stderr
    assert not (tmp_path / "run" / "base_model").exists()


# ---------------------------------------------------------------- several files with weights
def write_rows(tmp_path, name, n, tag):
    path = tmp_path / name
    if path.suffix == ".csv":
        path.write_text("text\n" + "".join(f'"<s>Human: {tag}{i}\n</s><s>Assistant: 答{tag}{i}\n</s>"\n'
                                           for i in range(n)), encoding="utf-8")
    else:
        path.write_text(lines(*[chat(("user", f"{tag}{i}"), ("assistant", f"答{tag}{i}")) for i in range(n)]),
                        encoding="utf-8")
    return path


def train_questions(prepared, tokenizer):
    """How many times each question is in the train split."""
    texts = [tokenizer.decode(row["input_ids"]) for row in prepared.train]
    return Counter(t.split("Human:")[1].split("\n")[0].strip() for t in texts)


def mixed(tmp_path, tokenizer, weights, seed=0, *extra):
    a, b = write_rows(tmp_path, "a.jsonl", 10, "甲"), write_rows(tmp_path, "b.csv", 6, "乙")
    cfg = data_cfg(f"[{a},{b}]", f"data.weights={weights}", *extra)
    return prepare_data(cfg.data, get_template("human_assistant"), tokenizer, seed)


def test_weights_count_rows_per_epoch(tmp_path, tokenizer):
    prepared = mixed(tmp_path, tokenizer, "[2,0.5]")
    counts = train_questions(prepared, tokenizer)
    assert {k: v for k, v in counts.items() if k.startswith("甲")} == {f"甲{i}": 2 for i in range(10)}
    halves = sorted(k for k in counts if k.startswith("乙"))
    assert len(halves) == 3 and all(counts[k] == 1 for k in halves)
    assert prepared.stats["rows"] == 23
    files = prepared.stats["files"]
    assert [(f["rows"], f["weight"], f["rows_per_epoch"]) for f in files] == [(10, 2.0, 20), (6, 0.5, 3)]
    written = write_preview(prepared.preview, tmp_path / "preview.jsonl").read_text(encoding="utf-8").splitlines()
    assert {json.loads(line)["file"] for line in written} <= {files[0]["file"], files[1]["file"]}
    assert files[0]["file"] in describe_first(tokenizer, prepared.preview)
    again = train_questions(mixed(tmp_path, tokenizer, "[2,0.5]"), tokenizer)
    assert again == counts  # the same seed chooses the same rows
    other_seeds = [sorted(k for k in train_questions(mixed(tmp_path, tokenizer, "[2,0.5]", s), tokenizer)
                          if k.startswith("乙")) for s in (1, 2, 3)]
    assert any(choice != halves for choice in other_seeds)


def test_weight_above_one_with_fraction_and_held_out_rows(tmp_path, tokenizer):
    prepared = mixed(tmp_path, tokenizer, "[1,2.5]", 0, "data.eval_fraction=0.25")
    eval_rows, files = prepared.stats["eval"]["rows"], prepared.stats["files"]
    assert eval_rows == 4 and sum(f["held_out"] for f in files) == 4
    kept_b = 6 - files[1]["held_out"]
    assert files[1]["rows_per_epoch"] == 2 * kept_b + round(0.5 * kept_b)
    assert prepared.stats["rows"] == files[0]["rows_per_epoch"] + files[1]["rows_per_epoch"]


def test_weight_problems_are_config_errors(tmp_path):
    a, b = write_rows(tmp_path, "a.jsonl", 2, "甲"), write_rows(tmp_path, "b.csv", 2, "乙")
    problems = collect_problems(compose(["data=csv", f"data.train_file=[{a},{b},{tmp_path}/none.jsonl]",
                                         "data.weights=[1,-1]", "data.format=sharegpt2"]))
    text = "\n".join(problems)
    assert "data.weights has 2 weights for 3 train files" in text
    assert "must be a finite number >= 0" in text and "none.jsonl': file not found" in text
    assert "data.format='sharegpt2': must be one of dialogue, sharegpt, openai, alpaca, community, raw" in text
    zero = collect_problems(compose(["data=csv", f"data.train_file=[{a},{b}]", "data.weights=[0,0]"]))
    assert any("at least one weight must be > 0" in p for p in zero)


def test_cache_key_follows_contents_and_format(tmp_path, tokenizer, capsys):
    path = write_rows(tmp_path, "a.jsonl", 4, "甲")
    cfg = compose(["data=csv", f"data.train_file={path}", "data.eval_fraction=0", f"data.cache_dir={tmp_path}/c"])
    template = get_template("human_assistant")
    prepare_data(cfg.data, template, tokenizer, 0)
    prepare_data(cfg.data, template, tokenizer, 0)
    assert capsys.readouterr().out.count("reusing the cached") == 1
    write_rows(tmp_path, "a.jsonl", 5, "甲")  # new contents: a new entry
    assert prepare_data(cfg.data, template, tokenizer, 0).stats["rows"] == 5
    forced = compose(["data=csv", f"data.train_file={path}", "data.eval_fraction=0", f"data.cache_dir={tmp_path}/c",
                      "data.format=openai"])
    prepare_data(forced.data, template, tokenizer, 0)
    assert "reusing" not in capsys.readouterr().out
