"""The studio's Gradio page: Compose (groups, fields, the checks, the command line, `--cfg job`, the data preview,
Launch), Run (page_runs.py: progress, curves, log, Stop/Resume, actions) and Runs & sweeps (page_runs.py).
Handlers only call the workspace (workspace.py); each shows the command it runs."""
from __future__ import annotations

import time
from typing import Any, Callable

import gradio as gr

from llama2ft.ui import data_preview
from llama2ft.ui.compose import FIELDS, NONE, method_edits, settings_text
from llama2ft.ui.page_runs import build_run_tab, build_runs_tab
from llama2ft.ui.workspace import Session, Workspace, shown_of

CSS = data_preview.PREVIEW_CSS + """
.l2f-chart svg { max-width: 100%; height: auto; }
#problems textarea, #command textarea, #command input { font-family: monospace; }
#run-log textarea, #action-log textarea, #preview-log textarea { font-family: monospace; font-size: 0.8em; }
"""
OK_TEXT = "no problems: llama2ft-train's checks pass"


def elem(key: str) -> str:
    """The element id of a field or group (a browser test finds it by this)."""
    return key.replace(".", "-").replace("_", "-")


def _field(f: Any, value: Any) -> Any:
    kwargs = {"label": f.label, "elem_id": f"field-{elem(f.key)}", "value": value, "min_width": 200}
    if f.kind == "bool":
        return gr.Checkbox(**kwargs)
    if f.kind == "int":
        return gr.Number(precision=0, **kwargs)
    if f.kind == "float":
        return gr.Number(step=0.0001, **kwargs)
    return gr.Textbox(**kwargs)


def form_outputs(ws: Workspace, s: Session) -> list[Any]:
    """Compose the session's draft and say what changes in the form: fields and method settings only where the
    composition changed them (a field the user is typing in is left alone), the checks, command line, config."""
    composed = ws.check(s.draft)
    if composed.cfg is None:
        updates = [gr.skip()] * (len(FIELDS) + 1)
    else:
        new = shown_of(composed)
        updates = [v if v != old else gr.skip() for v, old in zip(new["fields"], s.shown["fields"])]
        updates.append(settings_text(new["method"]) if new["method"] != s.shown["method"] else gr.skip())
        s.shown = new
    return [*updates, composed.error or OK_TEXT, composed.command_line(), composed.job_yaml()]


def edit(ws: Workspace, change: Callable[[Session, Any], None]) -> Callable[..., list[Any]]:
    """A handler applying `change(session, value)` to the browser session's draft, then composing it."""
    def handler(value: Any, request: gr.Request) -> list[Any]:
        s = ws.session(request.session_hash)
        with s.lock:
            change(s, value)
            return form_outputs(ws, s)
    return handler


def build_compose_tab(ws: Workspace) -> dict[str, Any]:
    first = ws.first
    with gr.Tab("Compose", id="compose"):
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    groups = {g: gr.Dropdown(([NONE] if ws.composer.defaults.get(g) is None else []) + opts,
                                             value=ws.composer.default_choice(g), label=g, min_width=150,
                                             elem_id=f"group-{elem(g)}") for g, opts in ws.composer.groups.items()}
                with gr.Row():
                    fields = [_field(f, v) for f, v in zip(FIELDS, first.field_values())]
                with gr.Row():
                    method = gr.Textbox(settings_text(first.method_settings()), lines=3, elem_id="method-settings",
                                        label="method settings (key: value per line)", placeholder="(none)")
                    extra = gr.Textbox(label="more overrides (as on the command line)", elem_id="extra", lines=3,
                                       placeholder="trainer.logging_steps=5 data.eval_fraction=0.05")
            with gr.Column(scale=2):
                problems = gr.Textbox(first.error or OK_TEXT, label="checks (llama2ft-train's own, all at once)",
                                      lines=4, max_lines=14, interactive=False, elem_id="problems")
                command = gr.Textbox(first.command_line(), label="command line", interactive=False, lines=2,
                                     buttons=["copy"], elem_id="command")
                with gr.Row():
                    preview_btn = gr.Button("Preview data (llama2ft-prepare)", elem_id="preview")
                    launch_btn = gr.Button("Launch (llama2ft-train)", variant="primary", elem_id="launch")
                launch_msg = gr.Textbox(label="launch", interactive=False, lines=2, elem_id="launch-message")
                with gr.Accordion("composed config (the command with --cfg job)", open=False):
                    config = gr.Code(first.job_yaml(), language="yaml", interactive=False, elem_id="config-yaml",
                                     buttons=["copy"], max_lines=30)
        gr.Markdown("### See the data first")
        with gr.Row():
            upload = gr.File(label="upload a data file (sets data.train_file; data=sample becomes data=csv)",
                             elem_id="upload", file_types=[".csv", ".jsonl", ".json", ".parquet"], height=170)
            preview_status = gr.Textbox(label="data preview", interactive=False, lines=3, elem_id="preview-status")
        with gr.Row():
            stats = gr.Dataframe(headers=["figure", "train", "eval"], label="data_stats.json", interactive=False,
                                 elem_id="preview-stats", scale=1)
            tokens = gr.HTML(elem_id="preview-tokens", scale=2)
        with gr.Accordion("prepare's output", open=False):
            preview_log = gr.Textbox(lines=8, interactive=False, elem_id="preview-log", show_label=False)

    form = [*fields, method, problems, command, config]

    def set_group(group: str) -> Callable[..., None]:
        def change(s: Session, choice: str) -> None:
            s.draft.groups[group] = choice
            if group == "method":  # another method has other settings
                s.draft.edits = {k: v for k, v in s.draft.edits.items() if not k.startswith("method.")}
        return change

    for g, box in groups.items():
        box.input(edit(ws, set_group(g)), [box], form, show_progress="hidden")

    def set_field(i: int) -> Callable[..., None]:
        def change(s: Session, value: Any) -> None:
            if value != s.shown["fields"][i]:
                s.draft.edits[FIELDS[i].key] = value
        return change

    for i, box in enumerate(fields):
        for event in ([box.input] if FIELDS[i].kind == "bool" else [box.blur, box.submit]):
            event(edit(ws, set_field(i)), [box], form, show_progress="hidden")

    def set_method(s: Session, text: str) -> None:
        edits, bad = method_edits(text, s.shown["method"])
        s.draft.edits.update(edits)
        s.draft.extra_problems = bad

    method.blur(edit(ws, set_method), [method], form, show_progress="hidden")

    def set_extra(s: Session, text: str) -> None:
        s.draft.extra = text

    for event in (extra.blur, extra.submit):
        event(edit(ws, set_extra), [extra], form, show_progress="hidden")

    def on_upload(file: Any, request: gr.Request) -> list[Any]:
        s = ws.session(request.session_hash)
        with s.lock:
            if file:
                s.draft.edits["data.train_file"] = str(ws.upload(file if isinstance(file, str) else file.name))
                if s.draft.groups.get("data") == "sample":  # the embedded sample is not the user's data
                    s.draft.groups["data"] = "csv"
            return [*form_outputs(ws, s), s.draft.groups.get("data")]

    upload.upload(on_upload, [upload], [*form, groups["data"]], show_progress="hidden")

    def on_preview(request: gr.Request) -> Any:
        s = ws.session(request.session_hash)
        job, folder, message = ws.preview(s.draft)
        yield message, gr.skip(), gr.skip(), ""
        if job is None:
            return
        while job.running:
            time.sleep(0.5)
            yield message, gr.skip(), gr.skip(), job.output()
        if job.returncode != 0:
            yield f"{job.shown()} exited {job.returncode}:\n{job.output(8)}", [], "", job.output()
            return
        stats_data, rows = data_preview.read_prepared(folder)
        html = data_preview.tokens_html(ws.tokenizer(ws.check(s.draft)), rows)
        yield f"{job.shown()}\ndone: {folder}", data_preview.stats_table(stats_data), html, job.output()

    preview_btn.click(on_preview, None, [preview_status, stats, tokens, preview_log])
    return {"launch": launch_btn, "launch_msg": launch_msg}


def build_page(ws: Workspace, title: str) -> Any:
    with gr.Blocks(title=title) as page:
        gr.Markdown(f"## {title}\nRuns live in `{ws.runs_dir}`; commands run in `{ws.cwd}`. Every button runs the "
                    "command line it shows.")
        with gr.Tabs() as tabs:
            compose = build_compose_tab(ws)
            run_tab = build_run_tab(ws)
            runs_tab = build_runs_tab(ws)

        def on_launch(request: gr.Request) -> list[Any]:
            folder, message = ws.launch(ws.session(request.session_hash).draft)
            if folder is None:
                return [message, gr.skip(), gr.skip()]
            return [message, gr.Dropdown(choices=ws.run_labels(), value=ws.label(folder)), gr.Tabs(selected="run")]

        compose["launch"].click(on_launch, None, [compose["launch_msg"], run_tab["select"], tabs])
        page.load(lambda: gr.Dropdown(choices=ws.run_labels()), None, [run_tab["select"]])
        runs_tab["tab"].select(runs_tab["refresh_fn"], None, runs_tab["refresh_outputs"])
    return page
