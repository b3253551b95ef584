"""Typed schemas of the commands other than training: chat, web, serve and eval share the generation
keys (configs/generate/default.yaml); merge, export and vocab have their own. Unknown keys and wrong
types are rejected when Hydra composes; value checks stay with the code that uses the values."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from llama2ft.config.train_schema import QuantConfig, RopeScaling, TemplateConfig
from llama2ft.inference.model_choice import ModelChoice
from llama2ft.inference.sampling import SamplingKeys


@dataclass
class GenerateConfig(SamplingKeys, ModelChoice):
    """What chat, web, API and eval load and how they sample: the model keys (inference/model_choice.py)
    and the sampling keys (inference/sampling.py) as they are stated there, plus the training's
    `template=`/`quant=` groups, which override what the run says (the spec reads their name and mode)."""

    template: Optional[TemplateConfig] = None
    quant: Optional[QuantConfig] = None


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
