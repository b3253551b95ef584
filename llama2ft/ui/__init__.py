"""ui: the studio (`llama2ft-studio`, whose command is llama2ft/studio.py), a Gradio page over the commands and
the run folder. Every action shows the command line it stands for and runs it as a subprocess
(`python -m llama2ft.<command> ...`); what the page shows of a run it reads through model/run_folder.py.
Nothing here trains, prepares, merges or evaluates by itself.

compose.py (groups, fields, overrides, the CLI's own checks, `--cfg job`), jobs.py (subprocesses and their
output), workspace.py (what each button does), data_preview.py (prepare's data_stats.json and preview.jsonl),
runs.py (the run and sweep table, progress), curves.py (charts from log.jsonl), actions.py (chat, merge,
export, eval of a finished run), page.py and page_runs.py (the Gradio page)."""
