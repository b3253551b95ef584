"""What the studio does with a finished run, each one command: chat with it (`llama2ft-web`, the run's template),
merge it (`llama2ft-merge`), export the merged model as GGUF (`llama2ft-export`, a quant choice) and evaluate it
(`llama2ft-eval`: the Chinese-answer rate on the built-in questions, or the benchmarks on the embedded sample).
Outputs go beside the runs, under runs_dir/merged and runs_dir/eval, never into the run folder."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llama2ft.publishing.gguf import QUANTS

ACTIONS = ("chat", "merge", "export", "eval", "benchmark")
GGUF_QUANTS = QUANTS
_SERVING = re.compile(r"llama2ft-web: .* on (http://\S+)")


@dataclass
class Planned:
    command: str  # llama2ft.<command>
    args: list[str]
    result: Optional[Path]  # the folder or file it makes


def name_of(run: Path, runs_dir: Path) -> str:
    """A file-name-safe name for a run's outputs (its path under runs_dir)."""
    try:
        rel = Path(run).relative_to(runs_dir)
    except ValueError:
        rel = Path(Path(run).name)
    return "_".join(rel.parts)


def plan(action: str, run: Path, runs_dir: Path, quant: str = "q8_0", port: int = 0, host: str = "127.0.0.1",
         auth: Optional[str] = None) -> Planned:
    name = name_of(run, runs_dir)
    merged = runs_dir / "merged" / name
    if action == "merge":
        return Planned("merge", [f"run={run}", f"output={merged}", "overwrite=true"], merged)
    if action == "export":
        gguf = merged / f"{name}.{quant}.gguf"
        return Planned("export", [f"source={merged}", f"output={gguf}", f"quant={quant}", "overwrite=true"], gguf)
    if action == "eval":
        out = runs_dir / "eval" / name
        return Planned("eval", [f"models=[{run}]", f"output={out}"], out)
    if action == "benchmark":
        out = runs_dir / "eval" / f"{name}-benchmark"
        return Planned("eval", ["task=benchmark", "benchmark_data=sample", "num_fewshot=2", f"models=[{run}]",
                                f"output={out}"], out)
    if action == "chat":
        return Planned("web", [f"run={run}", f"host={host}", f"port={port}", *([f"auth={auth}"] if auth else [])], None)
    raise ValueError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")


def chat_url(output: str) -> Optional[str]:
    """Where the started web chat serves, once it says so."""
    found = _SERVING.findall(output)
    return found[-1] if found else None


def result_html(action: str, result: Optional[Path]) -> str:
    """What a finished action made, shown in the page: the merged folder's files, the GGUF, the eval report
    with its charts."""
    if result is None or not result.exists():
        return ""
    if result.is_file():
        return f"<p>wrote <code>{html.escape(str(result))}</code> ({result.stat().st_size / 1e6:.1f} MB)</p>"
    parts = [f"<p>wrote <code>{html.escape(str(result))}</code></p>"]
    if action == "merge":
        files = sorted(p.name for p in result.iterdir() if not p.name.startswith("."))
        parts.append("<ul>" + "".join(f"<li><code>{html.escape(f)}</code></li>" for f in files) + "</ul>")
    report = result / "report.md"
    if report.is_file():
        parts.append(f'<pre class="l2f-report">{html.escape(report.read_text(encoding="utf-8"))}</pre>')
    for png in sorted(result.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f'<img alt="{html.escape(png.name)}" title="{html.escape(png.name)}" style="max-width:100%" '
                     f'src="data:image/png;base64,{data}">')
    return "".join(parts)
