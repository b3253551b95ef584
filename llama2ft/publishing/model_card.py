"""The model card (README.md) of a merged model: YAML metadata header, training settings, data
statistics, final metrics, provenance (base model, data fingerprints, package versions, commit: the run's
provenance.json, which the merge copies beside the weights), the prompt template, how to chat with the
model (transformers' `apply_chat_template`, llama.cpp, Ollama) and its files with their sizes (a section that
`llama2ft-export` refreshes when it writes a GGUF into the folder)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from llama2ft.core.environment import show_gpus
from llama2ft.model.run_folder import RunDir

TAGS = ["llama2", "lora", "llama2ft", "chinese"]
# Licenses of the base models the presets name; anything else is left out rather than guessed.
KNOWN_LICENSES = {"meta-llama/": "llama2", "FlagAlpha/": "llama2"}


@dataclass
class CardInfo:
    base: str
    adapters: list[str]
    dtype: str
    template: str
    system: Optional[str]
    example_prompt: str  # the text of one prompt exactly as the template renders it
    output_name: str
    folder: Optional[Path] = None  # the model's folder: its files are listed
    run: Optional[Path] = None
    run_cfg: Any = None  # the run's resolved training config (DictConfig) when merged from run=
    extra: dict = field(default_factory=dict)


def license_of(base: str) -> Optional[str]:
    return next((lic for prefix, lic in KNOWN_LICENSES.items() if base.startswith(prefix)), None)


def metadata_header(info: CardInfo) -> str:
    lines = ["---", f"base_model: {json.dumps(info.base, ensure_ascii=False)}", "language:", "- zh", "- en",
             "tags:", *[f"- {t}" for t in TAGS], "library_name: transformers", "pipeline_tag: text-generation"]
    lic = license_of(info.base)
    if lic:
        lines.append(f"license: {lic}")
    return "\n".join([*lines, "---", ""])


def _training_section(cfg: Any) -> list[str]:
    """The settings that matter for reproducing the run (not every key of config.yaml)."""
    if cfg is None:
        return ["Merged from adapters given on the command line; their training config is not known here.", ""]
    lora, tr, data = cfg.lora, cfg.trainer, cfg.data
    rows = [
        ("base model", cfg.model.name_or_path or "embedded tiny random-init Llama"),
        ("method", (cfg.get("method") or {}).get("name", "sft")),
        ("LoRA", f"r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}"),
        ("target modules", ", ".join(lora.target_modules)),
        ("modules to save", ", ".join(lora.modules_to_save) or "none"),
        ("quantization while training", cfg.quant.mode),
        ("learning rate", f"{tr.learning_rate} ({tr.lr_scheduler_type}, warmup {tr.warmup_ratio})"),
        ("epochs / max steps", f"{tr.num_train_epochs} / {tr.max_steps}"),
        ("batch", f"{tr.per_device_train_batch_size} x {tr.gradient_accumulation_steps} accumulation"),
        ("max sequence length", data.max_seq_len),
        ("packing", data.packing),
        ("train on inputs", data.train_on_inputs),
        ("seed", tr.seed),
    ]
    return ["| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]


def _json_section(data: dict, title: str) -> list[str]:
    if not data:
        return [f"No {title} recorded.", ""]
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    rows = [f"| {k} | {round(v, 4) if isinstance(v, float) else v} |" for k, v in flat.items()]
    nested = [f"| {k}.{kk} | {vv} |" for k, v in data.items() if isinstance(v, dict) for kk, vv in v.items()]
    return ["| key | value |", "|---|---|", *rows, *nested, ""]


def _provenance_section(base: str, record: dict) -> list[str]:
    """What made the training run, from its provenance.json."""
    if not record:
        return [f"Base model: `{base}`. No provenance recorded (adapters given on the command line, or a run made "
                "before runs recorded provenance.json).", ""]
    git, hw, cmd = record.get("git") or {}, record.get("hardware") or {}, record.get("command") or {}
    commit = (f"`{git['commit']}`" + (" (with uncommitted changes)" if git.get("dirty") else "") if git.get("commit")
              else f"unknown ({git.get('note', 'not recorded')})")
    lines = [f"From the training run's `provenance.json` (copied into this folder), status `{record.get('status')}`:",
             "", f"- base model: `{base}`", f"- llama2ft commit: {commit}",
             f"- hardware: CPU {hw.get('cpu')} ({hw.get('cpu_capability')}), GPUs: {show_gpus(hw.get('gpus'))}, "
             f"world size {hw.get('world_size')}",
             f"- command: `{' '.join([cmd.get('program', 'llama2ft-train'), *cmd.get('argv', [])])}`", "",
             "| data file | role | bytes | sha256 | rows | rows skipped |", "|---|---|---|---|---|---|"]
    lines += [f"| `{d['path']}` | {d['role']} | {d['size']} | `{d['sha256']}` | {d.get('rows')} | "
              f"{d.get('rows_skipped')} |" for d in record.get("data", [])]
    lines += ["", "| package | version |", "|---|---|"]
    lines += [f"| {name} | {version} |" for name, version in (record.get("packages") or {}).items()]
    return [*lines, ""]


FILES_START, FILES_END = "<!-- llama2ft:files -->", "<!-- /llama2ft:files -->"
EXAMPLE = "你好，请介绍一下你自己。"


def usage_snippet(name: str) -> str:
    """transformers: the tokenizer's chat_template renders the training template."""
    return f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "{name}"  # this folder
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", device_map="auto")
messages = [{{"role": "user", "content": "{EXAMPLE}"}}]
# the chat_template is the training template: the same token ids llama2ft's chat feeds the model
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True).to(model.device)
out = model.generate(**inputs, max_new_tokens=256)  # sampling defaults come from generation_config.json
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```"""


def gguf_snippet(name: str, ollama: bool = True) -> str:
    """llama.cpp (llama-cpp-python) and Ollama on an exported GGUF, which carries the template."""
    gguf = f"{name}.q4_k_m.gguf"
    modelfile = f"{Path(gguf).stem}.Modelfile"
    ollama_line = (f"Ollama: `ollama create {name} -f {name}/{modelfile}`, then `ollama run {name}`." if ollama else
                   "Ollama needs its own TEMPLATE for this model's chat_template (export writes no Modelfile).")
    return f"""```bash
llama2ft-export source={name} output={name}/{gguf} quant=q4_k_m{f"   # also writes {modelfile}" if ollama else ""}
```

```python
from llama_cpp import Llama

llm = Llama(model_path="{name}/{gguf}", n_ctx=2048)  # renders the GGUF's tokenizer.chat_template
reply = llm.create_chat_completion(messages=[{{"role": "user", "content": "{EXAMPLE}"}}])
print(reply["choices"][0]["message"]["content"])
```

llama.cpp's own tools read the same template: `llama-cli -m {name}/{gguf} --jinja -cnv`,
`llama-server -m {name}/{gguf} --jinja`. {ollama_line}"""


def files_section(folder: Optional[Path]) -> str:
    """The files of the model's folder with their sizes, between markers that export refreshes."""
    rows = []
    if folder is not None:
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != "README.md"):
            rows.append(f"| `{path.name}` | {human_size(path.stat().st_size)} |")
    body = ["| file | size |", "|---|---|", *rows] if rows else ["(files not listed)"]
    return "\n".join([FILES_START, *body, FILES_END])


def human_size(n: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n} B"


def refresh_files(card: Path, folder: Path) -> bool:
    """Rewrite the files section of an existing card (False when it has none, e.g. not ours)."""
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    start, end = text.find(FILES_START), text.find(FILES_END)
    if start < 0 or end < start:
        return False
    new = text[:start] + files_section(folder) + text[end + len(FILES_END):]
    tmp = card.with_name(card.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(card)
    return True


def render_card(info: CardInfo) -> str:
    run = info.run
    parts = [
        metadata_header(info),
        f"# {info.output_name}",
        "",
        f"A Chinese chat model fine-tuned with llama2ft (LoRA) and merged into `{info.base}` "
        f"(weights in {info.dtype}). Adapters merged, in order: {', '.join(f'`{a}`' for a in info.adapters)}.",
        "",
        "## Training config",
        "",
        *_training_section(info.run_cfg),
        "## Data statistics",
        "",
        *_json_section(RunDir(run).read_stats() if run else {}, "data statistics"),
        "## Final metrics",
        "",
        *_json_section(RunDir(run).read_metrics() if run else {}, "metrics"),
        "## Provenance",
        "",
        *_provenance_section(info.base, RunDir(run).read_provenance() if run else {}),
        "## Prompt template",
        "",
        f"Template `{info.template}`" + (f" with system prompt: {info.system}" if info.system else "") + ". "
        "The tokenizer's `chat_template` (and a GGUF export's `tokenizer.chat_template`) renders it exactly; "
        + ("it has no system prompt (a `system` message is left out). " if info.template == "human_assistant" else
           "a first `system` message replaces the system prompt (an empty one: none). ")
        + "An example prompt exactly as the model sees it (the answer is generated after it, "
        "so it ends where the answer begins):",
        "",
        "```text",
        info.example_prompt,
        "```",
        "",
        "## Usage",
        "",
        usage_snippet(info.output_name),
        "",
        "### llama.cpp and Ollama",
        "",
        gguf_snippet(info.output_name, ollama=info.template != "chat_template"),
        "",
        "Or with llama2ft's chat tooling (`llama2ft-chat model.name_or_path=THIS_FOLDER`), which renders the "
        "same template token by token.",
        "",
        "## Files",
        "",
        files_section(info.folder),
        "",
    ]
    return "\n".join(parts)


def write_card(info: CardInfo, path: Path) -> None:
    path.write_text(render_card(info), encoding="utf-8")
