"""The studio's layer without a browser (llama2ft/ui/): the group listing `--help` and the studio share, composing
with the CLI's own checks, command line and `--cfg job`, the actions' command lines, the per-step record
(log.jsonl) and what is drawn from it, the run table and progress, the data preview's tokens, and the jobs."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from conftest import compose, run_app
from llama2ft import CONFIG_DIR, PROJECT_ROOT
from llama2ft.config.groups import composed_groups, group_options
from llama2ft.model.run_folder import RunDir
from llama2ft.ui import actions, curves, runs
from llama2ft.ui.compose import Composer, Draft, method_edits, override
from llama2ft.ui.data_preview import stats_table, token_pieces, tokens_html
from llama2ft.ui.jobs import Job, Jobs

TRAIN_GROUPS = {"data", "experiment", "hparams_search", "logger", "lora", "method", "model", "quant", "template",
                "trainer"}


COMMAND_GROUPS = {"train": TRAIN_GROUPS, "prepare": TRAIN_GROUPS, "web": {"model", "quant", "template"},
                  "chat": {"model", "quant", "template"}, "serve": {"model", "quant", "template"},
                  "eval": {"benchmark_data"}, "studio": set(), "merge": set(), "export": set(), "vocab": set()}


def choices_of(command: str) -> dict:
    """The groups Hydra composed for a command (its `hydra.runtime.choices`)."""
    if command not in ("merge", "export", "vocab"):
        return dict(compose([], config_name=command).hydra.runtime.choices)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from llama2ft.config.hydra_app import register_schemas, stored_app_config

    register_schemas()
    with initialize_config_module(config_module="llama2ft", version_base="1.3"):
        cfg = hydra_compose(config_name=stored_app_config(command), return_hydra_config=True)
    return dict(cfg.hydra.runtime.choices)


@pytest.mark.parametrize("command", sorted(COMMAND_GROUPS))
def test_each_commands_help_lists_only_the_groups_it_composes(command):
    choices = choices_of(command)
    assert choices["hydra/help"] == "llama2ft"  # its --help prints describe_groups(choices), not Hydra's list
    groups = composed_groups(choices)
    assert set(groups) == COMMAND_GROUPS[command]
    assert all(groups[g] == group_options(g) for g in groups)  # the options are the files in configs/<group>/


def test_help_prints_the_listing():
    # the page `llama2ft-web --help` prints: Hydra fills $CONFIG into this (a real --help costs 10 s here)
    page = compose([], config_name="web").hydra.help.template
    assert page.startswith("llama2ft-web: a Gradio chat") and "$CONFIG" in page
    section = page.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = dict(re.findall(r"^(\w+): (.+)$", section, re.M))
    assert listed == {g: ", ".join(group_options(g)) for g in ("model", "quant", "template")}
    assert "data:" not in section and "accelerate:" not in section and "generate:" not in section


@pytest.fixture(scope="module")
def composer():
    return Composer()


def test_the_studio_offers_the_groups_of_train_with_its_options(composer):
    assert set(composer.groups) == TRAIN_GROUPS - {"hparams_search"}  # a sweep's group: left to the CLI
    assert composer.groups["quant"] == sorted(p.stem for p in (CONFIG_DIR / "quant").glob("*.yaml"))
    assert composer.default_choice("model") == "tiny" and composer.default_choice("experiment") == "(none)"


def test_bad_input_gets_the_lines_the_cli_prints(composer, tmp_path):
    missing = tmp_path / "missing.csv"
    draft = Draft(groups={"quant": "nf4", "lora": "full"}, edits={"data.train_file": str(missing)})
    composed = composer.check(draft)
    assert composed.overrides == ["lora=full", "quant=nf4", f"data.train_file={missing}"]
    assert len(composed.problems) == 2 and not composed.ok
    cli = run_app("train", *composed.overrides, f"hydra.run.dir={tmp_path}/run")
    assert cli.returncode == 2
    assert composed.error in cli.stderr and composed.error.startswith("error: invalid config (2 problems)")

    train_own = composer.check(Draft(extra="trainer.resume=maybe"))  # one of the checks train.py adds
    assert "trainer.resume" in train_own.error and train_own.error.count("\n  - ") == 1
    typed = composer.check(Draft(extra="trainer.max_steps=many"))  # a composition error: Hydra's own message
    assert "could not be converted to Integer" in typed.error and typed.cfg is None
    assert "is not an override" in composer.check(Draft(extra="--cfg job")).error


def test_the_command_line_and_cfg_job_are_the_clis(composer, tmp_path):
    data = tmp_path / "my data.csv"
    shutil.copyfile(PROJECT_ROOT / "data" / "sample" / "dev.csv", data)
    draft = Draft(groups={"method": "dpo", "lora": "r16"}, edits={"trainer.max_steps": 7.0, "data.packing": False},
                  extra=f"data.train_file='{data}' trainer.logging_steps=2")
    edits, bad = method_edits("beta: 0.2\nloss_type: sigmoid\n", composer.check(draft).method_settings())
    assert edits == {"method.beta": 0.2} and not bad
    draft.edits.update(edits)
    composed = composer.check(draft)
    assert composed.ok, composed.error
    assert composed.command_line() == ("llama2ft-train lora=r16 method=dpo trainer.max_steps=7 data.packing=false "
                                       f"method.beta=0.2 'data.train_file={data}' trainer.logging_steps=2")
    cli = run_app("train", *composed.overrides, "--cfg", "job")
    assert cli.returncode == 0, cli.stderr
    assert composed.job_yaml() == cli.stdout
    assert composed.cfg.method.beta == 0.2 and composed.cfg.data.train_file == str(data)


def test_overrides_in_hydras_grammar():
    assert override("data.eval_file", "") == "data.eval_file=null"
    assert override("data.packing", True) == "data.packing=true"
    assert override("trainer.max_steps", 60.0) == "trainer.max_steps=60"
    assert override("data.train_file", "[a.jsonl,b.csv]") == "data.train_file=[a.jsonl,b.csv]"
    assert override("data.train_file", "/d/it's here.csv") == "data.train_file='/d/it\\'s here.csv'"
    cfg = compose([override("data.train_file", "/d/it's here.csv")])
    assert cfg.data.train_file == "/d/it's here.csv"
    assert method_edits("beta: [", {})[1] and method_edits("- a", {})[1]


def test_the_actions_command_lines_compose_for_their_commands(smoke_run, tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from llama2ft.config.hydra_app import stored_app_config

    planned = {a: actions.plan(a, smoke_run.path, tmp_path, quant="q4_k_m", port=7999, auth="me:pw")
               for a in actions.ACTIONS}
    name = actions.name_of(smoke_run.path, tmp_path)
    assert planned["merge"].args == [f"run={smoke_run.path}", f"output={tmp_path}/merged/{name}", "overwrite=true"]
    assert planned["export"].result == tmp_path / "merged" / name / f"{name}.q4_k_m.gguf"
    assert planned["chat"].args == [f"run={smoke_run.path}", "host=127.0.0.1", "port=7999", "auth=me:pw"]
    assert Job.shown_for("web", planned["chat"].args).endswith("port=7999 'auth=me:***'")  # the page hides it
    assert "benchmark_data=sample" in planned["benchmark"].args
    for action in ("chat", "eval", "benchmark"):  # every key is one the command knows
        cfg = compose(planned[action].args, config_name=planned[action].command)
        assert cfg.get("port", 7999) == 7999
    with initialize_config_module(config_module="llama2ft", version_base="1.3"):
        for action in ("merge", "export"):
            assert hydra_compose(config_name=stored_app_config(planned[action].command), overrides=planned[action].args)
    assert actions.chat_url("llama2ft-web: run on http://127.0.0.1:7999\n") == "http://127.0.0.1:7999"


# ---------------------------------------------------------------- the per-step record and what reads it
def test_the_step_log_keeps_every_event_and_a_resume_drops_what_came_after_its_checkpoint(tmp_path):
    from types import SimpleNamespace

    from llama2ft.training.step_log import step_log

    run = RunDir(tmp_path)
    for step in (5, 10, 15, 20):  # an attempt killed after step 20, its last checkpoint at 10
        run.append_log({"step": step, "loss": 1.0 / step})
    with run.log.open("a") as f:
        f.write('{"step": 25, "lo')  # a line cut short by the kill
    callback = step_log(run)
    state = SimpleNamespace(is_world_process_zero=True, global_step=10, max_steps=30, epoch=0.5)
    callback.on_train_begin(None, state, None)
    assert [e["step"] for e in run.read_log()] == [5, 10]
    state.global_step = 15
    callback.on_log(None, state, None, logs={"loss": 0.5, "learning_rate": 1e-3, "epoch": 0.6})
    last = run.read_log()[-1]
    assert last["step"] == 15 and last["max_steps"] == 30 and last["loss"] == 0.5 and last["time"] > 0
    callback.on_log(None, SimpleNamespace(is_world_process_zero=False, global_step=15), None, logs={"loss": 1})
    assert len(run.read_log()) == 3  # only the main process writes


def test_the_smoke_run_logged_its_steps_and_the_charts_draw_them(smoke_run):
    log = RunDir(smoke_run.path).read_log()
    trained = [e for e in log if "loss" in e]
    assert [e["step"] for e in trained] == [5, 10] and all(e["max_steps"] == 10 for e in log)
    assert any("eval_loss" in e for e in log) and all(e["time"] > 1e9 for e in log)
    svg = curves.chart(curves.run_panels(log))
    path = re.search(r'<g id="curve-train-loss">.*?<path d="([^"]+)"', svg, re.S).group(1)
    assert len(re.findall(r"[ML]", path)) == 2 and 'id="curve-learning-rate"' in svg
    assert 'id="curve-eval-loss"' in svg and 'id="curve-rewards-margins"' not in svg
    prog = runs.progress(smoke_run.path, running=False)
    assert (prog.step, prog.total) == (10, 10) and prog.text().startswith("step 10/10 (100%)")
    assert [p[0] for p in curves.run_panels([{"step": 1, "loss": 1.0, "rewards/margins": 0.5}])] == [
        "loss", "learning rate", "method"]  # the method's own figures get their chart
    assert curves.method_keys([{"rewards/margins": 1, "reward/len": 2, "preference_accuracy": 1, "kl": 0,
                                "loss": 1, "grad_norm": 2}]) == ["kl", "preference_accuracy", "reward/len",
                                                                "rewards/margins"]


def test_a_runs_record_shows_what_made_it_and_the_answers_grpo_sampled_last(smoke_run, tmp_path):
    """The Run tab's record: provenance.json's commit, packages, hardware and each data file's fingerprint and
    rows; for a GRPO run, the answers of its last logged step with their rewards."""
    import hashlib

    from llama2ft.ui.record import record_html

    shown = record_html(smoke_run.path)
    train = PROJECT_ROOT / "data" / "sample" / "train.csv"
    assert hashlib.sha256(train.read_bytes()).hexdigest()[:16] in shown and "<td>2000</td>" in shown
    assert "status</b> completed" in shown and "torch 2." in shown and "experiment=tiny_smoke" in shown
    assert "answers sampled" not in shown  # an SFT run samples nothing
    grpo = RunDir(tmp_path)
    for step, answer, reward in ((5, "四", 0.0), (10, "九百零三", 1.0), (10, "九百零二", 0.0)):
        with grpo.completions.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "prompt": "请用中文写出数字 903。", "completion": answer,
                                "rewards": {"exact_match": reward}, "advantage": reward - 0.5}) + "\n")
    shown = record_html(tmp_path)
    assert "answers sampled at step 10" in shown and "九百零三" in shown and "四<" not in shown
    assert "exact_match 1.0" in shown and "no provenance.json" in shown


def test_runs_and_sweeps_are_found_and_tabled(smoke_run, tmp_path):
    (tmp_path / "train").mkdir()
    os.symlink(smoke_run.path, tmp_path / "train" / "smoke")
    sweep = tmp_path / "sweeps" / "lr"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    for job in ("0", "1"):
        os.symlink(smoke_run.path, sweep / job)
    found = runs.find(tmp_path)
    assert found.runs == [tmp_path / "train" / "smoke"] and found.sweeps == [sweep]
    row = dict(zip(runs.RUN_COLUMNS, runs.row(found.runs[0], tmp_path)))
    assert row["run"] == "train/smoke" and row["status"] == "completed" and row["method"] == "sft"
    assert row["overrides"] == "experiment=tiny_smoke" and row["eval_loss"] > 0
    assert runs.resume_args(found.runs[0]) == ["experiment=tiny_smoke", f"hydra.run.dir={found.runs[0]}"]
    from types import SimpleNamespace

    from llama2ft.training.sweeps import COLUMNS
    from llama2ft.ui.page_runs import sweep_view

    table, chart, overlaid = sweep_view(SimpleNamespace(path_of=lambda label: tmp_path / label), "sweeps/lr", "")
    assert [dict(zip(COLUMNS, r))["run"] for r in table] == ["0", "1"] and len(table[0]) == len(COLUMNS)
    assert chart.count('id="objective-bar') == 2 and "0: " in chart and "1: " in chart
    assert 'id="curve-0-train-loss"' in overlaid and 'id="curve-1-eval-loss"' in overlaid
    fake = [{"run": str(i), "overrides": f"a=1 lr={i + 2}", "eval_loss": v} for i, v in enumerate((1.0, 2.0, None))]
    chart = curves.objective_chart(fake, "eval_loss")  # each bar names what its run set differently
    assert chart.count('id="objective-bar') == 2 and "0: lr=2" in chart and "1: lr=3" in chart and "a=1" not in chart
    assert curves.best(fake, "eval_loss")["run"] == "0" and curves.best(fake, "eval_loss", "maximize")["run"] == "1"
    assert "higher is better" in curves.objective_chart(fake, "eval_loss", "maximize")


def test_the_preview_shows_tokens_with_the_trained_part(any_tokenizer):
    text = "<s>Human: 龘是什么？\n</s><s>Assistant: 九百零三\n</s>"
    ids = any_tokenizer(text, add_special_tokens=False)["input_ids"]
    cut = next(i for i, t in enumerate(any_tokenizer.convert_ids_to_tokens(ids)) if "Assistant" in t) + 1
    labels = [-100] * cut + ids[cut:]
    pieces = token_pieces(any_tokenizer, ids, labels)
    assert sum(len(p[2]) for p in pieces) == len(ids)  # every token shown once
    assert "龘" in [p[0] for p in pieces]  # byte-fallback tokens of one character shown as the character
    trained = "".join(p[0] for p in pieces if p[1])
    assert "九百零三" in trained and "龘" not in trained
    html = tokens_html(any_tokenizer, [{"split": "train", "row": 1, "input_ids": ids, "labels": labels}])
    assert html.count('class="l2f-tok l2f-trained"') == sum(p[1] for p in pieces) + 1  # + the legend
    assert stats_table({"rows": 3, "tokens": 9, "files": [], "eval": {"rows": 1}}) == [["rows", 3, 1],
                                                                                       ["tokens", 9, ""]]


def test_the_studio_checks_its_own_keys_before_it_starts(tmp_path):
    (tmp_path / "file").write_text("")
    res = run_app("studio", "port=0", "auth=nopassword", f"runs_dir={tmp_path / 'file'}")
    assert res.returncode == 2 and "invalid config (3 problems)" in res.stderr
    for problem in ("port=0: must be in 1..65535", "auth='nopassword': auth must be user:password", "not a folder"):
        assert problem in res.stderr


def test_a_job_runs_the_command_and_keeps_its_output(tmp_path):
    jobs = Jobs(tmp_path)
    job = jobs.start("key", "sweep", [str(tmp_path / "missing")])  # llama2ft-sweep-summary: a quick command
    assert job.wait(60) == 2 and not jobs.running()
    assert job.output() == f"error: {tmp_path / 'missing'} is not a folder"
    assert job.shown() == f"llama2ft-sweep-summary {tmp_path / 'missing'}" and job.status().startswith("exited 2")
    job._add("epoch 1\r")
    job._add("epoch 2\r50%\rdone\nnext\x1b[A\n")
    assert job.output().splitlines()[-2:] == ["done", "next"]  # a line redrawn with \r shows its last form
    assert json.dumps(job.output())
