"""llama2ft-studio in a real headless browser (Debian's chromium + chromedriver), used as a person uses it:
compose the embedded default with few steps, preview the data, launch, watch the curve grow, stop (the run is
interrupted at a checkpoint), resume, finish, merge; overlay two runs; bad input shows the CLI's error lines and
launches nothing. The launched run is held at two steps (core/faults.py pause points) so that the test sees it
mid-way however fast or slow the machine is."""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import offline_env, run_app, start_app
from fault_points import pause_env, release, wait_paused
from llama2ft import PROJECT_ROOT
from llama2ft.model.run_folder import RunDir
from studio_page import CHROMEDRIVER, CHROMIUM, Page

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("LLAMA2FT_REQUIRE_BROWSER"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them and requires the test)")]
# 40 steps, a checkpoint every 10, a loss every 5, an eval every 10; no greedy answers before/after (seconds)
STEPS = ["trainer.max_steps=40", "trainer.save_steps=10"]
EXTRA = "trainer.logging_steps=5 trainer.eval_steps=10 sample_eval.enabled=false"


@dataclass
class Studio:
    url: str
    runs_dir: Path
    pauses: Path


@pytest.fixture(scope="module")
def studio(tmp_path_factory, smoke_run, learned_run):
    """`llama2ft-studio` on a runs_dir holding the session's smoke and learned runs; what it launches pauses at the
    start of steps 10 and 20 until the test lets it go."""
    runs_dir = tmp_path_factory.mktemp("studio") / "runs"
    runs_dir.mkdir()
    os.symlink(smoke_run.path, runs_dir / "smoke")
    os.symlink(learned_run.path, runs_dir / "learned")
    pauses = tmp_path_factory.mktemp("pauses")
    env = {**offline_env(tmp_path_factory.getbasetemp()), **pause_env(pauses, "step-10", "step-20")}
    with pytest.MonkeyPatch.context() as mp:  # the studio's environment is its commands' environment
        for key, value in env.items():
            mp.setenv(key, value)
        proc, url = start_app("studio", f"runs_dir={runs_dir}")
    yield Studio(url + "/", runs_dir, pauses)
    proc.terminate()
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page(studio):
    assert CHROMIUM and CHROMEDRIVER, "LLAMA2FT_REQUIRE_BROWSER is set but chromium/chromedriver are missing"
    page = Page(studio.url)
    yield page
    page.driver.quit()


def loss_steps(folder: Path) -> list[int]:
    return [e["step"] for e in RunDir(folder).read_log() if "loss" in e]


def test_compose_preview_launch_watch_stop_resume_finish_merge(studio, page):
    page.open()
    page.type("field-trainer-max-steps", "40")
    page.type("field-trainer-save-steps", "10")
    page.type("extra", EXTRA)
    command = f"llama2ft-train {' '.join(STEPS)} {EXTRA}"
    page.wait(lambda: page.value("command") == command, 30)

    # the data first: llama2ft-prepare's statistics and the first row's tokens, its trained part highlighted
    page.click("preview")
    page.wait(lambda: "done:" in page.value("preview-status") or "exited" in page.value("preview-status"))
    assert page.value("preview-status").startswith(f"llama2ft-prepare {' '.join(STEPS)} {EXTRA} hydra.run.dir=")
    assert re.search(r"\brows\s+2000\s+60\b", page.text("preview-stats"))
    first = page.find(".l2f-row[data-row='1']")[0]
    trained = "".join(e.text for e in first.find_elements("css selector", ".l2f-trained"))
    assert trained == "▁六百八十↵</s>"  # the answer with its newline and EOS; the question is masked

    # launch: the Run tab shows it; the run is held at the start of step 10, then of step 20
    page.click("launch")
    page.wait(lambda: page.value("launch-message").startswith("launched: "), 30)
    folder = Path(page.value("launch-message").split("hydra.run.dir=")[1].strip())
    assert folder.parent == studio.runs_dir / "train"
    wait_paused(studio.pauses, "step-10")
    page.wait(lambda: page.points("curves", "curve-train-loss") == 1, 30)  # step 5
    release(studio.pauses, "step-10")
    wait_paused(studio.pauses, "step-20")
    page.wait(lambda: page.points("curves", "curve-train-loss") == 3, 30)  # steps 5, 10, 15: the curve grew
    assert page.value("progress").startswith("step 15/40 (38%)") and "ETA" in page.value("progress")

    # stop: SIGTERM; the run finishes step 20, writes its checkpoint, exits 75
    page.click("stop")
    page.wait(lambda: page.value("run-message").startswith("SIGTERM sent"), 10)
    release(studio.pauses, "step-20")
    page.wait(lambda: "interrupted at step 20 (checkpoint-20) · exit code 75" in page.value("progress"))
    run = RunDir(folder)
    assert run.read_state()["state"] == "interrupted" and run.recorded(20) and not run.is_finished()

    # resume: the same command again; it continues from checkpoint-20 and finishes
    page.click("resume")
    page.wait(lambda: page.value("run-message").startswith("resumed: "), 10)
    page.wait(lambda: "completed · exit code 0" in page.value("progress"), 180)
    assert page.value("run-command") == f"{command} hydra.run.dir={folder}"
    assert "resuming from" in page.value("run-log") or run.is_finished()
    assert loss_steps(folder) == [5, 10, 15, 20, 25, 30, 35, 40]  # one log.jsonl, no step twice
    page.wait(lambda: page.points("curves", "curve-train-loss") == 8, 10)
    assert page.points("curves", "curve-eval-loss") == 3  # 10, 30, 40: at the stop the checkpoint has the time
    assert run.read_metrics()["steps_this_run"] == 20
    page.wait(lambda: "status completed" in page.text("run-record"), 10)  # what made it: provenance.json
    assert run.read_provenance()["data"][0]["sha256"][:16] in page.text("run-record")

    # merge the finished run: the page shows the command and the merged folder
    page.click("action-merge")
    merged = studio.runs_dir / "merged" / f"train_{folder.name}"
    shown = f"llama2ft-merge run={folder} output={merged} overwrite=true"
    page.wait(lambda: page.value("action-command") == shown, 10)
    page.wait(lambda: "model.safetensors" in page.text("action-result"), 180)
    assert f"wrote {merged}" in page.text("action-result")
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()


def test_two_runs_overlaid(studio, page):
    page.open()
    page.tab("Runs & sweeps")
    page.wait(lambda: "learned" in page.text("runs-table") and "smoke" in page.text("runs-table"), 30)
    for name in ("smoke", "learned"):
        [label] = [e for e in page.find("#overlay-runs label") if e.text.strip() == name]
        label.click()
    for name in ("smoke", "learned"):
        expected = len(loss_steps(studio.runs_dir / name))
        page.wait(lambda: page.points("overlay", f"curve-{name}-train-loss") == expected, 30)
    assert page.points("overlay", "curve-smoke-eval-loss") >= 1
    assert page.points("overlay", "curve-learned-eval-loss") >= 1


def test_bad_input_shows_the_clis_error_lines_and_launches_nothing(studio, page, tmp_path):
    missing = tmp_path / "missing.csv"
    page.open()
    page.choose("quant", "nf4")
    page.choose("lora", "full")
    page.type("field-data-train-file", str(missing))
    page.wait(lambda: "2 problems" in page.value("problems"), 30)
    cli = run_app("train", "quant=nf4", "lora=full", f"data.train_file={missing}", f"hydra.run.dir={tmp_path}/run")
    assert cli.returncode == 2 and page.value("problems") in cli.stderr
    assert "quant=nf4 with lora=full" in page.value("problems") and "file not found" in page.value("problems")
    before = sorted((studio.runs_dir / "train").iterdir()) if (studio.runs_dir / "train").is_dir() else []
    page.click("launch")
    page.wait(lambda: page.value("launch-message").startswith("not launched"), 30)
    assert page.value("problems") in page.value("launch-message")
    time.sleep(1)
    after = sorted((studio.runs_dir / "train").iterdir()) if (studio.runs_dir / "train").is_dir() else []
    assert after == before


def test_an_uploaded_file_becomes_the_train_file(studio, page):
    page.open()
    page.find("#upload input[type=file]")[0].send_keys(str(PROJECT_ROOT / "data" / "sample" / "dev.csv"))
    uploaded = studio.runs_dir / "uploads" / "dev.csv"
    page.wait(lambda: page.value("command") == f"llama2ft-train data=csv data.train_file={uploaded}", 30)
    assert uploaded.read_bytes() == (PROJECT_ROOT / "data" / "sample" / "dev.csv").read_bytes()
    assert page.value("field-data-train-file") == str(uploaded) and "checks pass" in page.value("problems")


def test_a_sweep_is_ranked_the_way_chosen(studio, page):
    """A sweep's summary in the Runs tab: lower is better by default (the learned run, job 1, first); "maximize"
    (a GRPO sweep's reward_after, an accuracy) puts the other first and says so on the chart."""
    sweep = studio.runs_dir / "sweeps" / "lr"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    for job, run in (("0", "smoke"), ("1", "learned")):
        os.symlink((studio.runs_dir / run).resolve(), sweep / job)
    page.open()
    page.tab("Runs & sweeps")
    page.click("runs-refresh")
    page.pick("sweep-select", "sweeps/lr")
    page.wait(lambda: page.first_row("sweep-table")[0] == "1", 30)
    assert "lower is better" in page.text("sweep-chart")
    page.press("sweep-direction", "maximize")
    page.wait(lambda: page.first_row("sweep-table")[0] == "0", 30)
    assert "higher is better" in page.text("sweep-chart")
