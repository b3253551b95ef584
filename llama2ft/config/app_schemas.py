"""Typed schemas of the commands other than training: chat, web, serve and eval share the generation
keys (configs/generate/default.yaml); merge, export and vocab have their own. Unknown keys and wrong
types are rejected when Hydra composes; value checks stay with the code that uses the values."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from llama2ft.config.train_schema import QuantConfig, RopeScaling, TemplateConfig
from llama2ft.inference.sampling import Sampling


@dataclass
class InferenceModel:
    """The `model` node of the generation apps: a folder or hub id (a merged model included)."""

    name_or_path: Optional[str] = None
    tokenizer: Optional[str] = None  # default: the run's, the adapter's, else the model's
    revision: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto: bfloat16/float16 on GPU, float32 on CPU


@dataclass
class GenerateConfig:
    """What chat, web, API and eval load and how they sample."""

    run: Optional[str] = None  # a training run folder: base, adapter, template come from it
    model: InferenceModel = field(default_factory=InferenceModel)
    adapter: Optional[str] = None
    system: Optional[str] = None  # system prompt (llama2_inst); default: the run's or the merged folder's
    device: str = "auto"  # auto | cpu | cuda
    cpu_linear: str = "auto"  # CPU matrix products: auto (oneDNN on packed weights where it works) | onednn | torch
    template: Optional[TemplateConfig] = None  # the template=/quant= groups override what the run says
    quant: Optional[QuantConfig] = None
    temperature: float = Sampling.temperature
    top_p: float = Sampling.top_p
    top_k: int = Sampling.top_k
    repetition_penalty: float = Sampling.repetition_penalty
    max_new_tokens: int = Sampling.max_new_tokens
    do_sample: bool = Sampling.do_sample
    seed: Optional[int] = None


@dataclass
class ChatConfig(GenerateConfig):
    prompt: Optional[str] = None
    prompts_file: Optional[str] = None
    prompts_column: str = "question"
    output: Optional[str] = None


@dataclass
class WebConfig(GenerateConfig):
    host: str = "127.0.0.1"
    port: int = 7860
    auth: Optional[str] = None
    title: str = "llama2ft chat"
    concurrency: int = 8
    max_queue: Optional[int] = 16  # browser requests allowed to wait; more get "busy, try again" (null: no limit)
    max_batch: int = 8  # answers generated together (continuous batching); 1: one at a time


@dataclass
class ServeConfig(GenerateConfig):
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    served_name: Optional[str] = None
    max_queue: Optional[int] = 16  # requests allowed to wait for the model; more get HTTP 503 (null: no limit)
    max_request_bytes: int = 1_000_000  # larger request bodies get HTTP 413
    max_batch: int = 8  # requests generated together (continuous batching); 1: one at a time
    engine: str = "transformers"  # transformers | vllm (GPU, the `vllm` extra)


@dataclass
class EvalConfig(GenerateConfig):
    task: str = "generate"  # generate | loss
    models: list[Any] = field(default_factory=list)  # paths, or {name, run | path, adapter, template, system}
    questions: Optional[str] = None
    encoding: Optional[str] = None
    prompt_template: Optional[str] = None  # llama2_inst | human_assistant | model
    chinese_threshold: float = 0.5
    batch_size: int = 8
    max_batch: int = 8  # task=generate: questions answered together (continuous batching, answers as if alone)
    engine: str = "transformers"  # transformers | vllm (GPU, the `vllm` extra)
    data_file: Optional[str] = None
    max_seq_len: int = 2048
    output: str = "outputs/eval"


@dataclass
class MergeConfig:
    run: Optional[str] = None
    base: Optional[str] = None
    adapters: list[str] = field(default_factory=list)
    tokenizer: Optional[str] = None
    template: str = "human_assistant"
    system: Optional[str] = None
    base_name: Optional[str] = None
    output: Optional[str] = None
    dtype: Optional[str] = None  # float16 | bfloat16 | float32
    max_shard_size: str = "5GB"
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)  # base=/adapters=: as the adapters trained
    verify: bool = True
    overwrite: bool = False


@dataclass
class ExportConfig:
    format: str = "gguf"
    source: Optional[str] = None
    output: Optional[str] = None
    quant: str = "f16"  # f16 | q8_0 | f32
    overwrite: bool = False


@dataclass
class VocabConfig:
    corpus: Optional[str] = None
    column: str = "text"
    encoding: Optional[str] = None
    base: str = "???"
    vocab_size: Optional[int] = None
    min_frequency: int = 2
    max_piece_length: Optional[int] = None
    heldout: Optional[str] = None
    output: Optional[str] = None
    overwrite: bool = False


APP_SCHEMAS = {"chat": ChatConfig, "web": WebConfig, "serve": ServeConfig, "eval": EvalConfig,
               "merge": MergeConfig, "export": ExportConfig, "vocab": VocabConfig}
