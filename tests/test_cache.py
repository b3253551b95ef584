"""The preprocessing cache: reused for the same inputs, rebuilt when any part of the key changes."""
from __future__ import annotations

import json

import pytest

from conftest import run_app, run_cli

REUSED = "reusing the cached preprocessing"


def prepare(tmp_path, name, *overrides, cache_dir, runner=run_app):
    res = runner("prepare", *overrides, f"hydra.run.dir={tmp_path}/{name}", env={"LLAMA2FT_CACHE_DIR": str(cache_dir)})
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_second_prepare_reuses_and_changes_rebuild(tmp_path):
    cache_dir = tmp_path / "cache"
    first = prepare(tmp_path, "a", "data.packing=true", cache_dir=cache_dir)
    assert REUSED not in first.stdout
    second = prepare(tmp_path, "b", "data.packing=true", cache_dir=cache_dir)
    assert REUSED in second.stdout
    assert json.loads((tmp_path / "a" / "data_stats.json").read_text()) == \
        json.loads((tmp_path / "b" / "data_stats.json").read_text())
    for change in ("data.packing=false", "data.max_seq_len=96", "template=llama2_inst",
                   "data.train_on_inputs=true"):
        res = prepare(tmp_path, change.replace("=", "_"), "data.packing=true", change, cache_dir=cache_dir)
        assert REUSED not in res.stdout, change
    assert len([p for p in cache_dir.iterdir() if not p.name.startswith(".")]) == 5


def test_changed_file_content_rebuilds(tmp_path):
    cache_dir = tmp_path / "cache"
    from llama2ft import PROJECT_ROOT

    train = tmp_path / "train.csv"
    train.write_bytes((PROJECT_ROOT / "data" / "sample" / "train.csv").read_bytes())
    args = ["data=csv", f"data.train_file={train}", "data.eval_fraction=0.1"]
    prepare(tmp_path, "a", *args, cache_dir=cache_dir)
    assert REUSED in prepare(tmp_path, "b", *args, cache_dir=cache_dir).stdout
    with train.open("a", encoding="utf-8") as f:
        f.write('"<s>Human: 新问题\n</s><s>Assistant: 新答案\n</s>"\n')
    assert REUSED not in prepare(tmp_path, "c", *args, cache_dir=cache_dir).stdout


def test_cache_can_be_turned_off(tmp_path):
    cache_dir = tmp_path / "cache"
    prepare(tmp_path, "a", "data.cache=false", cache_dir=cache_dir)
    # the next run is another process: data.cache=false keeps a process's preprocessing in a scratch folder
    # of that process (reused within it, e.g. by the jobs of a sweep), so in this one it would be reused
    later = prepare(tmp_path, "b", "data.cache=false", cache_dir=cache_dir, runner=run_cli)
    assert REUSED not in later.stdout
    assert not cache_dir.exists()


@pytest.mark.slow
def test_training_reuses_what_prepare_wrote(tmp_path):
    cache_dir = tmp_path / "cache"
    prepare(tmp_path, "p", "experiment=tiny_smoke", cache_dir=cache_dir)
    res = run_app("train", "experiment=tiny_smoke", f"hydra.run.dir={tmp_path}/t",
                  env={"LLAMA2FT_CACHE_DIR": str(cache_dir)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert REUSED in res.stdout


def test_killed_cache_write_leaves_nothing_half_written(tmp_path):
    """kill -9 in the middle of writing the Arrow files: no entry appears, and the next run builds a
    complete one (clearing the dead run's temporary folder)."""
    cache_dir = tmp_path / "cache"
    res = run_cli("prepare", f"hydra.run.dir={tmp_path}/a",  # a process of its own: it SIGKILLs itself
                  env={"LLAMA2FT_CACHE_DIR": str(cache_dir), "LLAMA2FT_KILL_AT": "data-batch"})
    assert res.returncode == -9, res.stderr[-2000:]
    leftovers = list(cache_dir.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".") and ".tmp-" in leftovers[0].name
    assert (leftovers[0] / "train.arrow").exists()  # it was killed mid-write
    second = prepare(tmp_path, "b", cache_dir=cache_dir)
    assert REUSED not in second.stdout
    assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".")] == []
    clean = prepare(tmp_path, "c", cache_dir=tmp_path / "clean-cache")
    assert json.loads((tmp_path / "b" / "data_stats.json").read_text()) == \
        json.loads((tmp_path / "c" / "data_stats.json").read_text())
    assert REUSED in prepare(tmp_path, "d", cache_dir=cache_dir).stdout and clean.returncode == 0
