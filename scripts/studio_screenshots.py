"""Screenshots of llama2ft-studio for the README (docs/images/studio_*.png), taken in headless chromium while
driving the flow of tests/test_studio_browser.py on the embedded default: compose with few steps and preview the
data, launch and watch (held mid-way), stop, resume, finish, merge, a second run, both overlaid, and a small
sweep's summary. With `--grpo-run DIR` (a finished method=grpo run, e.g. the README's Chinese-answer run) also
the Run tab of that run: its reward curves and its record (`--only-grpo`: that picture alone). Needs Debian's
chromium and chromedriver; a few minutes on 2 CPU cores.

    .venv/bin/python scripts/studio_screenshots.py [--out docs/images] [--grpo-run DIR [--only-grpo]]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from studio_page import Page  # noqa: E402 - tests/studio_page.py, beside the browser test

FEW_STEPS = "trainer.logging_steps=5 trainer.eval_steps=10 sample_eval.enabled=false"


def start_studio(runs_dir: Path, pauses: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "LLAMA2FT_PAUSE_AT": "step-30", "LLAMA2FT_PAUSE_DIR": str(pauses), "PYTHONUNBUFFERED": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "-m", "llama2ft.studio", f"runs_dir={runs_dir}", f"port={port}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(path: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.2)


def compose(page: Page, steps: int, extra: str) -> None:
    page.open()
    page.type("field-trainer-max-steps", str(steps))
    page.type("field-trainer-save-steps", "10")
    page.type("extra", extra)
    page.wait(lambda: f"max_steps={steps}" in page.value("command") and extra in page.value("command"), 60)


def shoot(page: Page, out: Path, name: str, height: int) -> None:
    page.driver.set_window_size(1400, height)
    page.driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.0)
    page.driver.save_screenshot(str(out / name))
    print(f"wrote {out / name}", flush=True)


def shoot_grpo(page: Page, out: Path) -> None:
    """The Run tab of the GRPO run linked as runs_dir/grpo: reward curves, the answers it sampled, provenance."""
    page.open()
    page.tab("Run")
    page.box("run-select").click()
    page.find("#run-select li[aria-label='grpo']")[0].click()
    page.wait(lambda: page.find("#curves g[id^='curve-reward']") and "answers sampled" in page.text("run-record"), 60)
    shoot(page, out, "studio_grpo.png", 1900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--port", type=int, default=7899)
    parser.add_argument("--grpo-run", type=Path, help="a finished method=grpo run to show on the Run tab")
    parser.add_argument("--only-grpo", action="store_true", help="only the GRPO run's picture")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="studio-shots-"))
    runs_dir, pauses = work / "runs", work / "pauses"
    pauses.mkdir(parents=True)
    runs_dir.mkdir()
    if args.grpo_run:
        os.symlink(args.grpo_run.resolve(), runs_dir / "grpo")
    if args.only_grpo:
        studio = start_studio(runs_dir, pauses, args.port)
        page = Page(f"http://127.0.0.1:{args.port}/", height=1100)
        try:
            page.wait(lambda: page.driver.get(page.url) or page.find("#problems"), 120)
            shoot_grpo(page, args.out)
        finally:
            page.driver.quit()
            studio.terminate()
            studio.wait(120)
        return
    # a small sweep to show beside the runs
    subprocess.run([sys.executable, "-m", "llama2ft.train", "-m", "experiment=tiny_smoke", "trainer.max_steps=30",
                    "trainer.learning_rate=5e-4,2e-3,8e-3", f"hydra.sweep.dir={runs_dir}/sweeps/lr"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    studio = start_studio(runs_dir, pauses, args.port)
    page = Page(f"http://127.0.0.1:{args.port}/", height=1100)
    try:
        page.wait(lambda: page.driver.get(page.url) or page.find("#problems"), 120)
        compose(page, 60, FEW_STEPS)
        page.click("preview")
        page.wait(lambda: "done:" in page.value("preview-status"), 300)
        shoot(page, args.out, "studio_compose.png", 1750)

        page.click("launch")
        wait_for(pauses / "step-30.paused")
        page.wait(lambda: page.points("curves", "curve-train-loss") == 5, 60)
        shoot(page, args.out, "studio_run.png", 1250)
        page.click("stop")
        (pauses / "step-30.go").touch()
        page.wait(lambda: "interrupted at step 30" in page.value("progress"), 300)
        page.click("resume")
        page.wait(lambda: "completed" in page.value("progress"), 600)
        page.click("action-merge")
        page.wait(lambda: "model.safetensors" in page.text("action-result"), 600)

        compose(page, 60, FEW_STEPS + " trainer.learning_rate=8e-3 lora.r=16")  # a second run, to compare
        page.click("launch")
        page.wait(lambda: "completed" in page.value("progress"), 600)
        page.tab("Runs & sweeps")
        page.wait(lambda: page.text("runs-table").count("completed") >= 2, 60)
        for label in page.find("#overlay-runs label"):
            label.click()
        page.wait(lambda: len(page.find("#overlay g[id$='-train-loss']")) == 2, 60)
        page.box("sweep-select").click()
        page.find("#sweep-select li[aria-label='sweeps/lr']")[0].click()
        page.wait(lambda: len(page.find("#sweep-chart [id^='objective-bar']")) == 3, 60)
        shoot(page, args.out, "studio_runs.png", 1850)
        if args.grpo_run:
            shoot_grpo(page, args.out)
    finally:
        page.driver.quit()
        studio.terminate()
        studio.wait(120)
    print(f"runs kept in {runs_dir}")


if __name__ == "__main__":
    main()
