"""The training config: a typed schema (unknown keys and wrong types are rejected when Hydra composes)
and value checks that are collected and reported all at once, before anything heavy is loaded."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from llama2ft.errors import ConfigError

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TinyInit:
    """Shape of a randomly initialised Llama built from its config (the offline default)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    seed: int = 0


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = None  # local folder or hub id; None builds a Llama from `init`
    tokenizer: Optional[str] = None  # defaults to name_or_path
    revision: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    attn_implementation: Optional[str] = None  # None: transformers' default (sdpa)
    init: Optional[TinyInit] = None
    # Embedding/head rows added for a tokenizer larger than the model (llama2ft-vocab): mean | normal
    resize_init: str = "mean"


@dataclass
class LoraConfig:
    enabled: bool = True  # false: full fine-tuning, no adapter
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    modules_to_save: list[str] = field(default_factory=list)


@dataclass
class QuantConfig:
    mode: str = "none"  # none | int8 | nf4
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto | bfloat16 | float16 | float32


@dataclass
class DataConfig:
    train_file: str = "???"
    eval_file: Optional[str] = None
    eval_fraction: float = 0.0  # held out from train_file when there is no eval_file
    text_column: str = "text"
    encoding: Optional[str] = None  # None: UTF-8 (a BOM is fine); e.g. gbk
    max_seq_len: int = 2048
    format: str = "dialogue"  # dialogue | raw
    train_on_inputs: bool = False
    skip_bad_rows: bool = False
    packing: bool = False  # several samples per row, each attending only to itself
    group_by_length: bool = True  # without packing: batch rows of similar length (less padding)
    cache: bool = True  # reuse tokenized data keyed by file contents, tokenizer, template and these settings
    cache_dir: Optional[str] = None  # None: $LLAMA2FT_CACHE_DIR or ~/.cache/llama2ft/data


@dataclass
class TemplateConfig:
    name: str = "human_assistant"  # human_assistant | llama2_inst
    system: Optional[str] = None  # system prompt, used by llama2_inst


@dataclass
class TrainerConfig:
    learning_rate: float = 2e-4
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 200
    save_total_limit: Optional[int] = 3
    seed: int = 42
    resume: bool = False
    dataloader_num_workers: int = 0
    use_cpu: bool = False


@dataclass
class LoggerConfig:
    report_to: list[str] = field(default_factory=list)  # [] | [wandb] | [tensorboard]
    project: str = "llama2ft"
    wandb_mode: str = "offline"  # offline | online | disabled


@dataclass
class PathsConfig:
    root_dir: str = "???"
    data_dir: str = "???"
    output_dir: str = "???"


@dataclass
class SampleEvalConfig:
    """Greedy answers on held-out questions before and after training (exact match)."""

    enabled: bool = False
    file: Optional[str] = None  # defaults to data.eval_file
    max_questions: int = 60
    max_new_tokens: int = 32
    show: int = 5


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sample_eval: SampleEvalConfig = field(default_factory=SampleEvalConfig)
    task_name: str = "train"
    experiment_name: Optional[str] = None
    objective: str = "eval_loss"  # the metric a run returns (sweeps sort by it; lower is better)


def register_schema() -> None:
    """Make `train_schema` available to the defaults list of configs/train.yaml."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def _one_of(problems: list[str], key: str, value: Any, allowed: list[str]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r}: must be one of {', '.join(allowed)}")


def _file_exists(problems: list[str], key: str, value: Optional[str]) -> None:
    if value is not None and not Path(value).is_file():
        problems.append(f"{key}={value!r}: file not found")


def collect_problems(cfg: DictConfig) -> list[str]:
    """Every value problem in a composed training config (an empty list when it is valid)."""
    p: list[str] = []
    m, lora, q, d, t, tr = cfg.model, cfg.lora, cfg.quant, cfg.data, cfg.template, cfg.trainer
    if m.name_or_path is None and m.init is None:
        p.append("model.name_or_path: set a local folder or hub id (or model=tiny for the embedded model)")
    if m.name_or_path is not None and m.name_or_path.startswith((".", "/")) and not Path(m.name_or_path).exists():
        p.append(f"model.name_or_path={m.name_or_path!r}: folder not found")
    _one_of(p, "model.dtype", m.dtype, ["auto", "float32", "bfloat16", "float16"])
    _one_of(p, "model.resize_init", m.resize_init, ["mean", "normal"])
    if m.init is not None:
        for key in ("hidden_size", "intermediate_size"):
            if m.init[key] <= 0 or m.init[key] % 32:
                p.append(f"model.init.{key}={m.init[key]}: must be a positive multiple of 32")
        if m.init.num_attention_heads <= 0 or m.init.hidden_size % m.init.num_attention_heads:
            p.append("model.init.num_attention_heads: must divide model.init.hidden_size")
        elif m.init.num_key_value_heads <= 0 or m.init.num_attention_heads % m.init.num_key_value_heads:
            p.append("model.init.num_key_value_heads: must divide model.init.num_attention_heads")
    if lora.enabled:
        if lora.r <= 0:
            p.append(f"lora.r={lora.r}: must be > 0")
        if lora.alpha <= 0:
            p.append(f"lora.alpha={lora.alpha}: must be > 0")
        if not 0 <= lora.dropout < 1:
            p.append(f"lora.dropout={lora.dropout}: must be in [0, 1)")
        if not lora.target_modules:
            p.append("lora.target_modules: must name at least one module")
    _one_of(p, "quant.mode", q.mode, ["none", "int8", "nf4"])
    _one_of(p, "quant.compute_dtype", q.compute_dtype, ["auto", "bfloat16", "float16", "float32"])
    if q.mode != "none" and not lora.enabled:
        p.append(f"quant={q.mode} with lora=full: a quantized model cannot be fully fine-tuned; use a LoRA adapter")
    _file_exists(p, "data.train_file", d.train_file)
    _file_exists(p, "data.eval_file", d.eval_file)
    if not 0 <= d.eval_fraction < 1:
        p.append(f"data.eval_fraction={d.eval_fraction}: must be in [0, 1)")
    if d.max_seq_len < 16:
        p.append(f"data.max_seq_len={d.max_seq_len}: must be >= 16")
    _one_of(p, "data.format", d.format, ["dialogue", "raw"])
    if not d.text_column:
        p.append("data.text_column: must not be empty")
    _one_of(p, "template.name", t.name, ["human_assistant", "llama2_inst"])
    if tr.learning_rate <= 0:
        p.append(f"trainer.learning_rate={tr.learning_rate}: must be > 0")
    if tr.max_steps <= 0 and tr.num_train_epochs <= 0:
        p.append("trainer.num_train_epochs: must be > 0 (or set trainer.max_steps)")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "logging_steps", "eval_steps", "save_steps"):
        if tr[key] <= 0:
            p.append(f"trainer.{key}={tr[key]}: must be > 0")
    if not 0 <= tr.warmup_ratio < 1:
        p.append(f"trainer.warmup_ratio={tr.warmup_ratio}: must be in [0, 1)")
    _one_of(p, "trainer.precision", tr.precision, ["auto", "fp32", "bf16", "fp16"])
    for name in cfg.logger.report_to:
        _one_of(p, "logger.report_to", name, ["wandb", "tensorboard"])
    _one_of(p, "logger.wandb_mode", cfg.logger.wandb_mode, ["offline", "online", "disabled"])
    return p


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem."""
    problems = collect_problems(cfg)
    if problems:
        raise ConfigError(problems)
