"""The Run tab (one run: progress, live curves, the log's tail, Stop/Resume, and merge/export/eval/chat of a
finished run) and the Runs & sweeps tab (every run's row, overlaid curves, a sweep's sortable summary with its
objective per setting) of the studio's page."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import gradio as gr

from llama2ft.model.run_folder import RunDir
from llama2ft.ui import actions, curves, record, runs
from llama2ft.ui.workspace import Workspace
from llama2ft.training.sweeps import COLUMNS, DIRECTIONS, collect

TICK_S = 1.0
LOG_LINES = 14  # the tail shown: no scrolling to find the end
RUN_WIDTHS = ["15%", "13%", "6%", "26%", "8%", "8%", "10%", "7%", "7%"]  # of runs.RUN_COLUMNS
_charts: dict[tuple, str] = {}  # (log file, size, mtime) -> SVG: a chart is drawn again only when its log grew


def _stamp(path: Path) -> tuple:
    st = path.stat() if path.is_file() else None
    return (str(path), st.st_size if st else 0, st.st_mtime_ns if st else 0)


def _log_key(folder: Path) -> tuple:
    return _stamp(RunDir(folder).log)


def _record_key(folder: Path) -> tuple:
    """provenance.json is completed after the last log line, so the record has stamps of its own."""
    run = RunDir(folder)
    return _stamp(run.provenance) + _stamp(run.completions)


def run_chart(folder: Path) -> str:
    key = _log_key(folder)
    if key not in _charts:
        if len(_charts) > 64:
            _charts.clear()
        _charts[key] = curves.chart(curves.run_panels(RunDir(folder).read_log()))
    return _charts[key]


def _tail(folder: Path, lines: int = 60) -> str:
    """A run's train.log (Hydra's log of the job) for a run this studio did not start."""
    log = Path(folder) / "train.log"
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def build_run_tab(ws: Workspace) -> dict[str, Any]:
    with gr.Tab("Run", id="run"):
        with gr.Row():
            select = gr.Dropdown(choices=ws.run_labels(), value=None, label="run (under runs_dir)", scale=3,
                                 elem_id="run-select", allow_custom_value=True)
            stop = gr.Button("Stop (SIGTERM: checkpoint, exit 75)", variant="stop", elem_id="stop", scale=1)
            resume = gr.Button("Resume (the same command)", elem_id="resume", scale=1)
        progress = gr.Textbox(label="progress", interactive=False, elem_id="progress")
        command = gr.Textbox(label="command line", interactive=False, buttons=["copy"], elem_id="run-command")
        message = gr.Textbox(label="what the buttons did", interactive=False, elem_id="run-message")
        chart = gr.HTML(elem_id="curves")
        log = gr.Textbox(label="output (tail)", lines=LOG_LINES, max_lines=LOG_LINES, interactive=False,
                         elem_id="run-log")
        with gr.Accordion("Record: what made the run (provenance.json), the answers GRPO sampled last", open=True):
            made = gr.HTML(elem_id="run-record")
        with gr.Accordion("From a finished run: chat, merge, export, evaluate", open=True):
            with gr.Row():
                chat_btn = gr.Button("Chat (llama2ft-web)", elem_id="action-chat")
                merge_btn = gr.Button("Merge (llama2ft-merge)", elem_id="action-merge")
                quant = gr.Dropdown(list(actions.GGUF_QUANTS), value="q8_0", label="GGUF quant", elem_id="gguf-quant")
                export_btn = gr.Button("Export GGUF (llama2ft-export, after merge)", elem_id="action-export")
                eval_btn = gr.Button("Evaluate Chinese answers (llama2ft-eval)", elem_id="action-eval")
                bench_btn = gr.Button("Benchmarks on the embedded sample", elem_id="action-benchmark")
            action_cmd = gr.Textbox(label="action", interactive=False, buttons=["copy"], elem_id="action-command")
            action_log = gr.Textbox(label="action output (tail)", lines=8, max_lines=8, interactive=False,
                                    autoscroll=True, elem_id="action-log")
            result = gr.HTML(elem_id="action-result")
        seen = gr.State({})
        timer = gr.Timer(TICK_S)

    def folder_of(label: Optional[str]) -> Optional[Path]:
        return ws.path_of(label) if label else None

    def tick(label: Optional[str], last: dict) -> list[Any]:
        folder = folder_of(label)
        if folder is None or not folder.is_dir():
            return ["", "", "", "", "", "", "", "", last]
        running, job = ws.running(folder), ws.job_of(folder)
        prog = runs.progress(folder, running, job.started if job else None).text()
        prog += " · " + runs.status(folder, running)
        if job is not None and not job.running:
            prog += f" · exit code {job.returncode}"
        key = (label, _log_key(folder))
        svg = gr.skip() if last.get("chart") == key else run_chart(folder)
        out = job.output(LOG_LINES) if job is not None else _tail(folder, LOG_LINES)
        made_key = (label, _record_key(folder))
        made_html = gr.skip() if last.get("record") == made_key else record.record_html(folder)
        action, act = ws.action_of(folder)
        if act is None:
            return [prog, ws.command_of(folder), svg, out, made_html, "", "", "", {"chart": key, "record": made_key}]
        url = actions.chat_url(act.output()) if action == "chat" and act.running else None
        if url:
            done = f'<p>chat with it: <a href="{url}" target="_blank">{url}</a> (Stop ends the chat)</p>'
        else:
            done = actions.result_html(action, act.folder) if act.returncode == 0 else ""
        return [prog, ws.command_of(folder), svg, out, made_html, act.shown(), f"{act.output(30)}\n[{act.status()}]",
                done, {"chart": key, "record": made_key}]

    outputs = [progress, command, chart, log, made, action_cmd, action_log, result, seen]
    timer.tick(tick, [select, seen], outputs, show_progress="hidden")
    select.change(lambda label: tick(label, {}), [select], outputs, show_progress="hidden")
    stop.click(lambda label: ws.stop(folder_of(label)) if label else "choose a run", [select], [message])
    resume.click(lambda label: ws.resume(folder_of(label)) if label else "choose a run", [select], [message])
    for button, action in ((chat_btn, "chat"), (merge_btn, "merge"), (export_btn, "export"), (eval_btn, "eval"),
                           (bench_btn, "benchmark")):
        button.click(lambda label, q, a=action: ws.act(folder_of(label), a, q) if label else "choose a run",
                     [select, quant], [message])
    return {"select": select}


def runs_table(ws: Workspace) -> list[list[Any]]:
    return [runs.row(p, ws.runs_dir, ws.running(p)) for p in runs.find(ws.runs_dir).runs]


def overlay(ws: Workspace, labels: list[str]) -> str:
    chosen = {label: RunDir(ws.path_of(label)).read_log() for label in labels or []}
    return curves.chart(curves.overlay_panels(chosen), width=8, height=4) if chosen else ""


def _cell(value: Any) -> Any:
    return "" if value is None else (float(f"{value:.4g}") if isinstance(value, float) else value)


def sweep_view(ws: Workspace, label: Optional[str], objective: str, direction: str = "minimize") -> list[Any]:
    if not label:
        return [[], "", ""]
    folder, objective = ws.path_of(label), (objective or "eval_loss").strip()
    rows, _ = collect(folder, objective, direction)  # (the environment most jobs ran under: in its summary file)
    table = [[_cell(r.get(c)) for c in COLUMNS] for r in rows]
    logs = {r["run"]: RunDir(folder / r["run"]).read_log() for r in rows}
    return [table, curves.objective_chart(rows, objective, direction),
            curves.chart(curves.overlay_panels(logs), width=8)]


def build_runs_tab(ws: Workspace) -> dict[str, Any]:
    with gr.Tab("Runs & sweeps", id="runs") as tab:
        refresh = gr.Button("Refresh", elem_id="runs-refresh")
        table = gr.Dataframe(headers=runs.RUN_COLUMNS, interactive=False, elem_id="runs-table", wrap=True,
                             label="runs (click a header to sort)", column_widths=RUN_WIDTHS)
        chosen = gr.CheckboxGroup(choices=ws.run_labels(), label="overlay the curves of", elem_id="overlay-runs")
        overlaid = gr.HTML(elem_id="overlay")
        with gr.Row():
            sweep = gr.Dropdown(choices=[], label="sweep", elem_id="sweep-select", scale=3)
            objective = gr.Textbox("eval_loss", label="objective", elem_id="sweep-objective")
            direction = gr.Radio(list(DIRECTIONS), value="minimize", label="best is", elem_id="sweep-direction")
        summary = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="sweep-table", label="sweep summary")
        bars = gr.HTML(elem_id="sweep-chart")
        sweep_curves = gr.HTML(elem_id="sweep-curves")

    def refresh_fn() -> list[Any]:
        found = runs.find(ws.runs_dir)
        labels = [ws.label(p) for p in found.runs]
        return [runs_table(ws), gr.CheckboxGroup(choices=labels),
                gr.Dropdown(choices=[ws.label(p) for p in found.sweeps])]

    outputs = [table, chosen, sweep]
    refresh.click(refresh_fn, None, outputs)
    chosen.change(lambda labels: overlay(ws, labels), [chosen], [overlaid])
    for event in (sweep.change, objective.submit, direction.change):
        event(lambda label, obj, way: sweep_view(ws, label, obj, way), [sweep, objective, direction],
              [summary, bars, sweep_curves])
    return {"tab": tab, "refresh_fn": refresh_fn, "refresh_outputs": outputs}
