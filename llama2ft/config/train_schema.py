"""The training config's typed schema (configs/train.yaml and llama2ft-prepare): unknown keys and wrong
types are rejected when Hydra composes; value checks are in `validation`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from llama2ft.model.lora import LLAMA_PROJECTIONS


@dataclass
class TinyInit:
    """Shape of a randomly initialised Llama built from its config (the offline default)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    seed: int = 0


@dataclass
class RopeScaling:
    """RoPE scaling for a context longer than the base's max_position_embeddings (rope_type null: none).
    A node with defaults rather than None, so `model.rope_scaling={rope_type: yarn, factor: 4}` merges."""

    rope_type: Optional[str] = None  # null | linear | dynamic | yarn
    factor: float = 1.0


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
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)  # {rope_type: linear, factor: 2}: 2x positions


@dataclass
class LoraConfig:
    enabled: bool = True  # false: full fine-tuning, no adapter
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    modules_to_save: list[str] = field(default_factory=list)
    use_dora: bool = False  # DoRA: a learned magnitude per output row on top of the LoRA direction
    use_rslora: bool = False  # rsLoRA: scale alpha / sqrt(r) instead of alpha / r
    init: str = "default"  # default | gaussian | pissa | olora (peft's init_lora_weights)


@dataclass
class QuantConfig:
    mode: str = "none"  # none | int8 | nf4
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto | bfloat16 | float16 | float32


@dataclass
class DataConfig:
    train_file: Any = "???"  # a file (csv, jsonl, json, parquet, datasets folder) or a list of them
    eval_file: Optional[str] = None
    eval_fraction: float = 0.0  # held out from train_file when there is no eval_file
    text_column: str = "text"
    encoding: Optional[str] = None  # None: UTF-8 (a BOM is fine); e.g. gbk
    max_seq_len: int = 2048
    format: str = "dialogue"  # dialogue (shape detected per row) | sharegpt | openai | alpaca | community | raw
    weights: Optional[list[float]] = None  # per train file: times its rows enter an epoch (fractions: seeded share)
    train_on_inputs: bool = False
    skip_bad_rows: bool = False
    packing: bool = False  # several samples per row, each attending only to itself
    group_by_length: bool = True  # without packing: batch rows of similar length (less padding)
    cache: bool = True  # reuse tokenized data keyed by file contents, tokenizer, template and these settings
    cache_dir: Optional[str] = None  # None: $LLAMA2FT_CACHE_DIR or ~/.cache/llama2ft/data
    preview_rows: int = 5  # rows of each split written to preview.jsonl (token ids and labels)
    # a rerun or resume whose input file changed since the run recorded it (provenance.json) goes on, with a
    # warning; false: it stops before anything loads
    allow_changed: bool = False


@dataclass
class TemplateConfig:
    name: str = "human_assistant"  # human_assistant | llama2_inst | chat_template (the tokenizer's own)
    system: Optional[str] = None  # system prompt, used by llama2_inst


@dataclass
class TrainerConfig:
    learning_rate: float = 2e-4
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 4
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: str = "auto"  # auto (on only when a step would not fit in memory) | true | false
    kernels: str = "auto"  # auto (Liger on a CUDA GPU when installed) | liger | none
    compile: bool = False  # torch.compile the model (TrainingArguments.torch_compile)
    logging_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 200
    save_total_limit: Optional[int] = 3  # complete checkpoints kept; a new one must be complete before one goes
    seed: int = 42
    # auto: continue from the newest complete checkpoint in the run folder, start when there is none (what a
    # requeued or restarted job needs); true: the same; false: refuse a folder that has checkpoints
    resume: str = "auto"
    # caught while training: the current step finishes, a checkpoint is written, exit code 75 ([]: none caught)
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    dataloader_num_workers: int = 0
    use_cpu: bool = False
    loraplus_lr_ratio: Optional[float] = None  # LoRA+: LoRA B matrices learn this many times faster (e.g. 16)
    neftune_noise_alpha: Optional[float] = None  # NEFTune: noise on input embeddings while training (e.g. 5)


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
    # what training optimises: typed by the chosen method's own settings (configs/method/<name>.yaml extends
    # the `method/<name>_schema` each method in llama2ft/training/methods/ registers)
    method: Any = None
    init_from: Optional[str] = None  # a preference run starts from this SFT run folder or merged model folder
    task_name: str = "train"
    experiment_name: Optional[str] = None
    objective: str = "eval_loss"  # the metric a run returns (sweeps rank runs by it)
    objective_direction: str = "minimize"  # or maximize (reward_after, accuracies): sweeps' and optuna's ranking
