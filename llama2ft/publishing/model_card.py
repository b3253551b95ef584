"""The model card (README.md) of a merged model: YAML metadata header, training settings, data
statistics, final metrics, the prompt template and how to chat with the model."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

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
    example_prompt: str
    output_name: str
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


def usage_snippet(name: str, template: str) -> str:
    ask = ('"<s>Human: 你好，请介绍一下你自己。\\n</s><s>Assistant: "' if template == "human_assistant"
           else '"<s>[INST] 你好，请介绍一下你自己。 [/INST]"')
    return f"""```python
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "{name}"  # this folder
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", device_map="auto")
prompt = {ask}
# the prompt carries its own <s>: do not let the tokenizer add a second one
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
out = model.generate(**inputs)  # sampling defaults come from generation_config.json
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Or with llama2ft's chat tooling, which renders the same template token by token."""


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
        "## Prompt template",
        "",
        f"Template `{info.template}`" + (f" with system prompt: {info.system}" if info.system else "") + ". "
        "An example prompt exactly as the model sees it (the answer is generated after it):",
        "",
        "```text",
        info.example_prompt,
        "```",
        "",
        "## Usage",
        "",
        usage_snippet(info.output_name, info.template),
        "",
    ]
    return "\n".join(parts)


def write_card(info: CardInfo, path: Path) -> None:
    path.write_text(render_card(info), encoding="utf-8")
