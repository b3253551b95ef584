"""Local C-Eval and CMMLU files in their official release layouts, checked and turned into lm-eval tasks.

    C-Eval  DIR/dev/{subject}_dev.csv, DIR/val/{subject}_val.csv    id,question,A,B,C,D,answer[,explanation]
    CMMLU   DIR/dev/{subject}.csv,     DIR/test/{subject}.csv       ,Question,A,B,C,D,Answer

Every subject file present in the scored split (C-Eval: val, CMMLU: test) is a task named as lm-eval names
it (`ceval-valid_{subject}`, `cmmlu_{subject}`), with lm-eval's own prompt for that subject (its task file is
included; a subject lm-eval does not know gets the benchmark's description pattern), few-shot examples from
dev/. Reading checks everything first (pure stdlib: it runs before any model is loaded) and raises one
DataError naming the file and row. `write_tasks` writes the checked rows as JSON lines (every cell a string:
a csv read by `datasets` would turn "007" into 7) and the task and group files lm-eval reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llama2ft.core.errors import DataError
from llama2ft.data.csv_reader import read_columns
from llama2ft.evaluation.benchmark_subjects import known_subjects

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Layout:
    """One benchmark's release layout and its names in lm-eval."""

    key: str  # the benchmark_data.<key> setting and the short name in `benchmarks=[...]`
    title: str
    group: str  # lm-eval's group of all its subjects
    prefix: str  # lm-eval's task name = prefix + subject
    scored: str  # the split scored (and lm-eval's split key for it)
    split_key: str  # the lm-eval config key naming the scored split
    scored_file: str  # file name pattern in the scored folder
    dev_file: str
    columns: tuple[str, ...]
    question: str
    answer: str
    description: str  # lm-eval's description pattern, for subjects it has no task file of

    def layout_text(self) -> str:
        return (f"the official {self.title} layout: dev/{self.dev_file.format('SUBJECT')} and "
                f"{self.scored}/{self.scored_file.format('SUBJECT')} with columns {','.join(self.columns)}")


LAYOUTS = {
    "ceval": Layout("ceval", "C-Eval", "ceval-valid", "ceval-valid_", "val", "validation_split", "{}_val.csv",
                    "{}_dev.csv", ("id", "question", "A", "B", "C", "D", "answer"), "question", "answer",
                    "以下是中国关于{}的单项选择题，请选出其中的正确答案。\n\n"),
    "cmmlu": Layout("cmmlu", "CMMLU", "cmmlu", "cmmlu_", "test", "test_split", "{}.csv", "{}.csv",
                    ("Question", "A", "B", "C", "D", "Answer"), "Question", "Answer",
                    "以下是关于{}的单项选择题，请直接给出正确答案的选项。\n\n"),
}
ALIASES = {"ceval": "ceval-valid"}  # benchmarks=[ceval] is lm-eval's ceval-valid group


@dataclass
class Subject:
    """One subject's checked questions: the scored ones and the few-shot examples."""

    layout: Layout
    name: str
    scored_file: Path
    scored: list[dict[str, str]]
    dev_file: Optional[Path]
    dev: list[dict[str, str]]

    @property
    def task(self) -> str:
        return self.layout.prefix + self.name


def read_local(layout: Layout, folder: str, num_fewshot: int) -> list[Subject]:
    """Every subject of a local copy of the benchmark, checked (DataError naming the file and row)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"benchmark_data.{layout.key}={folder}: folder not found (expected {layout.layout_text()})")
    suffix = layout.scored_file.format("")
    files = sorted(p for p in (root / layout.scored).glob(f"*{suffix}") if p.is_file())
    if not files:
        raise DataError(f"benchmark_data.{layout.key}={folder}: no {layout.scored}/{layout.scored_file.format('*')} "
                        f"files (expected {layout.layout_text()})")
    subjects = []
    for path in files:
        name = path.name[: -len(suffix)]
        scored = _read_rows(layout, path)
        dev_path = root / "dev" / layout.dev_file.format(name)
        dev = _read_rows(layout, dev_path) if dev_path.is_file() else []
        if num_fewshot > len(dev):
            have = f"has {len(dev)} question(s)" if dev_path.is_file() else "is missing"
            raise DataError(f"{dev_path} {have}: num_fewshot={num_fewshot} takes that many examples of subject "
                            f"{name} from it (or set num_fewshot lower)")
        subjects.append(Subject(layout, name, path, scored, dev_path if dev else None, dev))
    return subjects


def _read_rows(layout: Layout, path: Path) -> list[dict[str, str]]:
    rows = read_columns(path, layout.columns)  # DataError: missing columns, no data rows; others (explanation) left out
    for number, row in rows:
        answer = row[layout.answer].strip()
        if answer not in LETTERS:
            raise DataError(f"{path} row {number}: {layout.answer} {row[layout.answer]!r} is not one of A, B, C, D")
        if not row[layout.question].strip():
            raise DataError(f"{path} row {number}: the {layout.question} cell is empty")
        row[layout.answer] = answer
    return [row for _, row in rows]


# ---------------------------------------------------------------- lm-eval task files
def write_tasks(subjects: list[Subject], dest: Path) -> list[Path]:
    """The subjects as lm-eval task files (plus one group file per benchmark, listing the subjects present)
    in `dest`, their rows as JSON lines in dest/data/; returns the files written."""
    import yaml

    lm_tasks = _lm_eval_tasks_dir()
    written = []
    by_layout: dict[str, list[Subject]] = {}
    for s in subjects:
        by_layout.setdefault(s.layout.key, []).append(s)
        files = {s.layout.scored: _write_jsonl(dest / "data" / s.layout.key / f"{s.name}_{s.layout.scored}.jsonl",
                                               s.scored)}
        config: dict = {"task": s.task, "dataset_path": "json", "dataset_name": None, s.layout.split_key: s.layout.scored}
        if s.dev:
            files["dev"] = _write_jsonl(dest / "data" / s.layout.key / f"{s.name}_dev.jsonl", s.dev)
            config["fewshot_split"] = "dev"
        config["dataset_kwargs"] = {"data_files": {k: str(v) for k, v in files.items()}}
        own = lm_tasks / s.layout.key / f"{s.task}.yaml"
        if s.name in known_subjects(s.layout.key) and own.is_file():
            config["include"] = str(own)  # lm-eval's own prompt and description for this subject
        else:
            config["include"] = str(_default_task_file(lm_tasks, s.layout.key))
            config["description"] = s.layout.description.format(s.name.replace("_", " "))
        written.append(_write_yaml(dest / f"{s.task}.yaml", config, yaml))
    for key, group in by_layout.items():
        layout = LAYOUTS[key]
        theirs = yaml.safe_load((lm_tasks / key / f"_{layout.group}.yaml").read_text(encoding="utf-8"))
        theirs["task"] = [s.task for s in group]
        written.append(_write_yaml(dest / f"_{layout.group}.yaml", theirs, yaml))
    return written


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _default_task_file(lm_tasks: Path, key: str) -> Path:
    return next(p for p in sorted((lm_tasks / key).iterdir()) if p.name.startswith("_default"))


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_yaml(path: Path, config: dict, yaml) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
