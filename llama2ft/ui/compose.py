"""Compose a `llama2ft-train` command: a choice per user-facing config group (config/groups.py: what the
command composes, as `--help` lists it), fields for the keys users change most, the chosen method's settings
and free overrides. Each edit composes the config in this process as Hydra does for the command and runs the
command's own checks (config/validation.py with training/checks.py), so the page shows every problem at once,
worded as the command prints them, with the exact command line and its `--cfg job`."""
from __future__ import annotations

import re
import shlex
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf, flag_override

from llama2ft import CONFIG_DIR
from llama2ft.config.groups import composed_groups
from llama2ft.config.validation import validate
from llama2ft.core.errors import ConfigError
from llama2ft.training.checks import training_problems

COMMAND = "train"
SWEEP_GROUPS = ("hparams_search",)  # groups that only mean something in a sweep (`-m`): left to the CLI
NONE = "(none)"  # the choice of a group that is not composed (experiment, by default)


@dataclass(frozen=True)
class Field:
    key: str
    label: str
    kind: str  # text | int | float | bool


FIELDS = (
    Field("data.train_file", "train file(s): csv, jsonl, json, parquet; [a.jsonl,b.csv] for several", "text"),
    Field("data.eval_file", "eval file (empty: none)", "text"),
    Field("init_from", "init_from: an SFT run folder or merged model (preference methods)", "text"),
    Field("trainer.learning_rate", "learning rate", "float"),
    Field("trainer.max_steps", "max steps (-1: by epochs)", "int"),
    Field("trainer.num_train_epochs", "epochs", "float"),
    Field("trainer.save_steps", "checkpoint every N steps", "int"),
    Field("lora.r", "LoRA rank", "int"),
    Field("data.max_seq_len", "max_seq_len", "int"),
    Field("data.packing", "packing", "bool"),
)
_PLAIN = re.compile(r"^[\w./~+:@-]*$")


def override(key: str, value: Any) -> str:
    """`key=value` in Hydra's override grammar: null for empty, lists as typed, other text quoted when needed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value) if key.split(".")[-1] in ("max_steps", "save_steps", "r", "max_seq_len") else value
    text = str(value).strip()
    if _PLAIN.match(text) or text.startswith(("[", "{", "'", '"')):
        return f"{key}={text}"
    return f"{key}='" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Draft:
    """What the user chose: an option per group, the keys they edited and free overrides (command-line text)."""

    groups: dict[str, str] = field(default_factory=dict)
    edits: dict[str, Any] = field(default_factory=dict)
    extra: str = ""
    extra_problems: list[str] = field(default_factory=list)  # of the method-settings box (not YAML, ...)


@dataclass
class Composed:
    overrides: list[str]
    cfg: Optional[DictConfig]  # the composed config (None when it does not compose)
    problems: list[str]  # every problem, as the command lists them
    error: str  # what the command would print for them ("" when there are none)

    @property
    def ok(self) -> bool:
        return not self.problems

    def command_line(self) -> str:
        return shlex.join([f"llama2ft-{COMMAND}", *self.overrides])

    def job_yaml(self) -> str:
        """What `llama2ft-train OVERRIDES --cfg job` prints."""
        if self.cfg is None:
            return ""
        job = self.cfg.copy()
        with flag_override(job, ["struct", "readonly"], [False, False]):
            del job["hydra"]
        return OmegaConf.to_yaml(job)

    def field_values(self) -> list[Any]:
        """The composed value of each field of FIELDS (lists as `[a,b]`)."""
        values = []
        for f in FIELDS:
            value = OmegaConf.select(self.cfg, f.key) if self.cfg is not None else None
            if OmegaConf.is_list(value):
                value = "[" + ",".join(str(v) for v in value) + "]"
            values.append("" if value is None and f.kind == "text" else value)
        return values

    def method_settings(self) -> dict[str, Any]:
        if self.cfg is None or self.cfg.get("method") is None:
            return {}
        return {k: v for k, v in OmegaConf.to_container(self.cfg.method, resolve=True).items() if k != "name"}


class Composer:
    """Composes the training config in this process (one at a time: Hydra's global state is not thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        base = self.compose([])
        self.defaults = {k: v for k, v in base.hydra.runtime.choices.items()}
        self.groups = {g: opts for g, opts in composed_groups(self.defaults).items() if g not in SWEEP_GROUPS}

    def default_choice(self, group: str) -> str:
        return self.defaults.get(group) or NONE

    def compose(self, overrides: list[str]) -> DictConfig:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from llama2ft.config.hydra_app import register_schemas
        from llama2ft.training.methods import register_schemas as register_methods

        with self._lock:
            register_schemas()
            register_methods()
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=COMMAND):
                    return compose(config_name=COMMAND, overrides=overrides, return_hydra_config=True)
            finally:
                GlobalHydra.instance().clear()

    def overrides(self, draft: Draft) -> tuple[list[str], list[str]]:
        """The override list of a draft, and the problems of its free text (not parsable, not an override)."""
        # in the form's order, whatever order the edits came in: groups, fields, method settings, free text
        out = [f"{g}={'null' if draft.groups[g] == NONE else draft.groups[g]}" for g in self.groups
               if draft.groups.get(g, self.default_choice(g)) != self.default_choice(g)]
        order = {f.key: i for i, f in enumerate(FIELDS)}
        out += [override(k, draft.edits[k]) for k in sorted(draft.edits, key=lambda k: (order.get(k, len(order)), k))]
        problems = list(draft.extra_problems)
        try:
            words = shlex.split(draft.extra or "")
        except ValueError as exc:
            return out, [*problems, f"more overrides: {exc}"]
        for word in words:
            if "=" not in word or word.startswith("-"):
                problems.append(f"more overrides: {word!r} is not an override key=value (sweeps, flags: use the CLI)")
            else:
                out.append(word)
        return out, problems

    def check(self, draft: Draft) -> Composed:
        """Compose the draft and run the command's checks on it."""
        overrides, problems = self.overrides(draft)
        if problems:
            return Composed(overrides, None, problems, "error: " + "\n".join(problems))
        try:
            cfg = self.compose(overrides)
        except Exception as exc:  # noqa: BLE001 - Hydra's and OmegaConf's composition errors, shown as the CLI does
            text = "\n".join(str(e).strip() for e in (exc, exc.__cause__) if e is not None and str(e).strip())
            return Composed(overrides, None, [text or type(exc).__name__], text or type(exc).__name__)
        try:
            validate(cfg, training_problems(cfg))
        except ConfigError as exc:
            return Composed(overrides, cfg, exc.problems, f"error: {exc}")
        return Composed(overrides, cfg, [], "")


def method_edits(text: str, current: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The `method.<key>` edits of the method-settings box (YAML `key: value` lines) against the composed values."""
    try:
        parsed = yaml.safe_load(text) if text and text.strip() else {}
    except yaml.YAMLError as exc:
        return {}, [f"method settings: not YAML ({str(exc).splitlines()[0]})"]
    if not isinstance(parsed, dict):
        return {}, ["method settings: write one `key: value` per line"]
    return {f"method.{k}": v for k, v in parsed.items() if k not in current or current[k] != v}, []


def settings_text(settings: dict[str, Any]) -> str:
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).strip() if settings else ""
