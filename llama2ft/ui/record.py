"""A run's record on the studio's Run tab: what made it (provenance.json: commit, packages, hardware, the data
files' fingerprints and rows, the command) and, for GRPO, the answers it sampled last with their rewards
(completions.jsonl). Both are read through the run-folder owner (model/run_folder.py)."""
from __future__ import annotations

from html import escape
from pathlib import Path

from llama2ft.model.run_folder import RunDir

PACKAGES = ("python", "torch", "transformers", "peft", "accelerate", "datasets")


def provenance_html(folder: Path) -> str:
    rec = RunDir(folder).read_provenance()
    if not rec:
        return "<p>no provenance.json (a run made before runs recorded one)</p>"
    git = rec.get("git") or {}
    commit = (git.get("commit") or "")[:12] + (" (dirty)" if git.get("dirty") else "") if git.get("commit") \
        else git.get("note", "not a git checkout")
    hw = rec.get("hardware") or {}
    gpus = ", ".join(f"{g.get('name')} {g.get('memory_gib', '')}".strip() for g in hw.get("gpus") or []) or "no GPU"
    packages = rec.get("packages") or {}
    lines = [f"<b>status</b> {escape(str(rec.get('status')))} · <b>commit</b> {escape(commit)} · <b>hardware</b> "
             f"{escape(str(hw.get('cpu')))} {escape(str(hw.get('cpu_capability')))}, {escape(gpus)}, world size "
             f"{hw.get('world_size')}",
             "<b>packages</b> " + ", ".join(f"{p} {escape(str(packages[p]))}" for p in PACKAGES if p in packages)]
    rows = "".join(f"<tr><td>{escape(d.get('role', ''))}</td><td>{escape(d.get('path', ''))}</td>"
                   f"<td>{d.get('size')}</td><td><code>{escape(str(d.get('sha256', ''))[:16])}</code></td>"
                   f"<td>{d.get('rows')}</td><td>{d.get('rows_skipped')}</td></tr>" for d in rec.get("data") or [])
    table = ("<table class='l2f-data'><tr><th>data</th><th>file</th><th>bytes</th><th>sha256</th><th>rows</th>"
             f"<th>skipped</th></tr>{rows}</table>")
    command = " ".join((rec.get("command") or {}).get("overrides") or [])
    return "<br>".join(lines) + table + f"<p><b>overrides</b> <code>{escape(command)}</code></p>"


def completions_html(folder: Path, last: int = 8) -> str:
    """The answers of the last logging step that sampled some (GRPO), with their rewards; '' for other runs."""
    run = RunDir(folder)
    rows = run.read_log(run.completions)
    if not rows:
        return ""
    step = rows[-1]["step"]
    shown = [r for r in rows if r["step"] == step][-last:]
    body = "".join(f"<tr><td>{escape(str(r['completion']))}</td><td>"
                   + ", ".join(f"{escape(k)} {v}" for k, v in (r.get("rewards") or {}).items())
                   + f"</td><td>{r.get('advantage')}</td></tr>" for r in shown)
    return (f"<p><b>answers sampled at step {step}</b> for <i>{escape(str(shown[0]['prompt']))}</i></p>"
            f"<table class='l2f-completions'><tr><th>answer</th><th>rewards</th><th>advantage</th></tr>{body}</table>")


def record_html(folder: Path) -> str:
    return completions_html(folder) + provenance_html(folder)
