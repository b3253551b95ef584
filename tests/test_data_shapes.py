"""Data files in the shapes other frameworks made common (ShareGPT, OpenAI chat, Alpaca, the community
format's text) and types (.jsonl, .json, .parquet, a datasets save_to_disk folder): the same dialogues
give exactly the ids and labels of the csv, on the embedded and the real Llama-2 tokenizer."""
from __future__ import annotations

import json

import pytest

from conftest import compose, run_app
from llama2ft.data.dialogue import Turn, format_dialogue
from llama2ft.data.pipeline import prepare_data
from llama2ft.data.records import iter_records
from llama2ft.data.templates import encode_dialogue, get_template

# (system, [(question, answer), ...]); a final question without an answer is not part of these shapes
DIALOGUES = [
    (None, [("你好", "你好！有什么可以帮你？")]),
    (None, [("3加4等于几？", "7"), ("再加5呢？", "12。")]),
    (None, [("Say hello", "Hello, world!"), ("翻译成中文", "你好，世界！"), ("谢谢", "不客气 🙂")]),
    (None, [("写一首诗\n关于春天", "春眠不觉晓，\n处处闻啼鸟。")]),
]


def turns_of(pairs):
    return [Turn(role, text) for q, a in pairs for role, text in (("human", q), ("assistant", a))]


def sharegpt(system, pairs):
    head = [{"from": "system", "value": system}] if system else []
    return {"conversations": head + [{"from": "human" if t.role == "human" else "gpt", "value": t.text}
                                     for t in turns_of(pairs)], "id": "x"}


def openai(system, pairs):
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": head + [{"role": "user" if t.role == "human" else "assistant", "content": t.text}
                                for t in turns_of(pairs)]}


def alpaca(system, pairs):
    *history, (q, a) = pairs
    instruction, _, extra = q.partition("\n")  # the Alpaca convention: instruction, then input on its own line
    row = {"instruction": instruction, "input": extra, "output": a, "history": [list(p) for p in history]}
    return {**row, "system": system} if system else row


def community(system, pairs):
    return {"text": format_dialogue(turns_of(pairs)), "source": "web"}


SHAPES = {"sharegpt": sharegpt, "openai": openai, "alpaca": alpaca, "community": community}


def write(path, objects):
    """`objects` as the file type `path` names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(objects, ensure_ascii=False, indent=2), encoding="utf-8")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(objects), path)
    elif path.suffix == ".csv":
        path.write_text("text\n" + "".join('"' + o["text"].replace('"', '""') + '"\n' for o in objects),
                        encoding="utf-8")
    else:  # a datasets save_to_disk folder
        from datasets import Dataset

        Dataset.from_list(objects).save_to_disk(str(path))
    return path


def prepare(path, tokenizer, *extra, template="human_assistant"):
    cfg = compose(["data=csv", f"data.train_file={path}", "data.eval_fraction=0", "data.cache=false",
                   f"template={template}", *extra])
    return prepare_data(cfg.data, get_template(cfg.template.name, cfg.template.system), tokenizer, 0)


def samples(prepared):
    return [(row["input_ids"], row["labels"]) for row in prepared.train]


CASES = [("sharegpt", "a.jsonl"), ("openai", "a.json"), ("alpaca", "a.jsonl"), ("community", "a.jsonl"),
         ("openai", "a.parquet"), ("sharegpt", "folder"), ("alpaca", "a.parquet"), ("community", "a.json")]


@pytest.mark.parametrize("shape,name", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_every_shape_gives_the_csv_ids_and_labels(tmp_path, any_tokenizer, shape, name):
    csv = write(tmp_path / "same.csv", [community(s, p) for s, p in DIALOGUES])
    expected = samples(prepare(csv, any_tokenizer))
    path = write(tmp_path / name, [SHAPES[shape](s, p) for s, p in DIALOGUES])
    prepared = prepare(path, any_tokenizer)
    assert samples(prepared) == expected
    assert prepared.stats["rows"] == len(DIALOGUES) and prepared.stats["turns"] == 14
    forced = prepare(path, any_tokenizer, f"data.format={shape}")  # the same shape, forced
    assert samples(forced) == expected


@pytest.mark.parametrize("shape", ["sharegpt", "openai", "alpaca"])
def test_a_system_message_is_the_rows_system_prompt(tmp_path, any_tokenizer, shape):
    """Rows with their own system prompt encode as the template with that system prompt does; rows
    without one keep the run's template.system."""
    rows = [("你是一个数学老师。", DIALOGUES[1][1]), (None, DIALOGUES[0][1])]
    path = write(tmp_path / "sys.jsonl", [SHAPES[shape](s, p) for s, p in rows])
    prepared = prepare(path, any_tokenizer, template="llama2_inst")
    run_system = compose(["template=llama2_inst"]).template.system
    for (system, pairs), got in zip(rows, samples(prepared)):
        want = encode_dialogue(get_template("llama2_inst", system or run_system), any_tokenizer, turns_of(pairs))
        assert got == (want.input_ids, want.labels)
    assert samples(prepared)[0][0] != encode_dialogue(get_template("llama2_inst", run_system), any_tokenizer,
                                                      turns_of(rows[0][1])).input_ids
    assert prepared.stats["rows_with_system"] == 1


def test_raw_text_from_json_and_mixed_shapes_in_one_file(tmp_path, tokenizer):
    raw = write(tmp_path / "raw.jsonl", [{"text": "一段用于继续预训练的文字。"}, {"text": "第二段。"}])
    assert prepare(raw, tokenizer, "data.format=raw").stats["rows"] == 2
    mixed = write(tmp_path / "mixed.jsonl", [sharegpt(*DIALOGUES[0]), openai(*DIALOGUES[1]), alpaca(*DIALOGUES[2])])
    expected = samples(prepare(write(tmp_path / "m.csv", [community(*d) for d in DIALOGUES[:3]]), tokenizer))
    assert samples(prepare(mixed, tokenizer)) == expected


def test_openai_content_parts_and_alpaca_csv(tmp_path, tokenizer):
    q, a = DIALOGUES[0][1][0]
    parts = write(tmp_path / "parts.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": q[:1]}, {"type": "text", "text": q[1:]}]},
        {"role": "assistant", "content": a}]}])
    expected = samples(prepare(write(tmp_path / "one.csv", [community(*DIALOGUES[0])]), tokenizer))
    assert samples(prepare(parts, tokenizer)) == expected
    alpaca_csv = tmp_path / "alpaca.csv"
    alpaca_csv.write_text(f'instruction,input,output\n"{q}",,"{a}"\n', encoding="utf-8")
    assert samples(prepare(alpaca_csv, tokenizer)) == expected


def test_records_name_where_each_row_is(tmp_path):
    """The plain reader other steps use for their own columns (e.g. prompt/chosen/rejected)."""
    rows = [{"prompt": "问", "chosen": "好", "rejected": "坏"}, {"prompt": "再问", "chosen": "对", "rejected": "错"}]
    jsonl = tmp_path / "pref.jsonl"
    jsonl.write_text("\n" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    got = list(iter_records(jsonl))
    assert [r.fields for r in got] == rows and [r.where for r in got] == ["line 2", "line 3"]
    csv = tmp_path / "pref.csv"
    csv.write_text("prompt,chosen,rejected\n问,好,坏\n再问,对,错\n", encoding="utf-8")
    assert [r.fields for r in iter_records(csv)] == rows
    for path in (write(tmp_path / "pref.json", rows), write(tmp_path / "pref.parquet", rows),
                 write(tmp_path / "pref_folder", rows)):
        records = list(iter_records(path))
        assert [r.fields for r in records] == rows and records[1].where.startswith("row 2"), path
    assert str(got[1].error("no 'chosen' field")) == f"{jsonl} line 3: no 'chosen' field"
    lines_json = tmp_path / "lines.json"  # a ".json" file that holds JSON lines, as many downloads do
    lines_json.write_text(jsonl.read_text(encoding="utf-8"), encoding="utf-8")
    assert [(r.fields, r.where) for r in iter_records(lines_json)] == [(r.fields, r.where) for r in got]


def test_eval_file_and_held_out_rows_from_json(tmp_path, tokenizer):
    train = write(tmp_path / "train.jsonl", [sharegpt(*d) for d in DIALOGUES * 3])
    dev = write(tmp_path / "dev.json", [openai(*d) for d in DIALOGUES[:2]])
    cfg = compose(["data=csv", f"data.train_file={train}", f"data.eval_file={dev}", "data.cache=false"])
    prepared = prepare_data(cfg.data, get_template("human_assistant"), tokenizer, 0)
    assert prepared.stats["eval"]["rows"] == 2 and prepared.examples[1] == turns_of(DIALOGUES[1][1])
    held = prepare(train, tokenizer, "data.eval_fraction=0.25")
    assert held.stats["rows"] == 9 and held.stats["eval"]["rows"] == 3


@pytest.mark.slow
def test_prepare_and_train_on_sharegpt_jsonl(tmp_path):
    rows = [sharegpt(None, [(f"{a}加{b}等于几？", f"{a + b}")]) for a in range(6) for b in range(6)]
    path = write(tmp_path / "train.jsonl", rows)
    res = run_app("prepare", "data=csv", f"data.train_file={path}", f"hydra.run.dir={tmp_path}/prep")
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads((tmp_path / "prep" / "data_stats.json").read_text())
    assert stats["rows"] + stats["eval"]["rows"] == 36 and stats["files"][0]["rows"] == 36
    first = json.loads((tmp_path / "prep" / "preview.jsonl").read_text().splitlines()[0])
    assert first["split"] == "train" and -100 in first["labels"] and set(first["labels"]) != {-100}
    res = run_app("train", "experiment=tiny_smoke", "data=csv", f"data.train_file={path}",
                  f"hydra.run.dir={tmp_path}/run")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps_this_run"] == 10 and "eval_loss" in metrics
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
