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
    prompt: Optional[str] = None  # answer this once and exit
    prompts_file: Optional[str] = None  # .txt (one prompt per line) or .csv (column prompts_column) -> jsonl
    prompts_column: str = "question"
    output: Optional[str] = None  # where prompts_file answers go (default: <prompts_file>.answers.jsonl)


@dataclass
class WebConfig(GenerateConfig):
    host: str = "127.0.0.1"  # 0.0.0.0 exposes it to the network: set auth then
    port: int = 7860
    auth: Optional[str] = None  # user:password
    title: str = "llama2ft chat"
    concurrency: int = 8  # sessions streaming at once
    max_queue: Optional[int] = 16  # browser requests allowed to wait; more get "busy, try again" (null: no limit)
    max_batch: int = 8  # answers generated together (continuous batching); 1: one at a time
    drain_seconds: float = 20.0  # on SIGTERM: answers in progress get this long to finish (new ones get 503)


@dataclass
class ServeConfig(GenerateConfig):
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None  # set: requests need "Authorization: Bearer <api_key>"
    served_name: Optional[str] = None  # the model id in /v1/models (default: the run or folder name)
    max_queue: Optional[int] = 16  # requests allowed to wait for the model; more get HTTP 503 (null: no limit)
    max_request_bytes: int = 1_000_000  # larger request bodies get HTTP 413
    max_batch: int = 8  # requests generated together (continuous batching); 1: one at a time
    engine: str = "transformers"  # transformers | vllm (GPU, the `vllm` extra)
    # on SIGTERM: requests in flight get this long to finish, new ones get 503 (below Kubernetes' 30 s grace)
    drain_seconds: float = 20.0


@dataclass
class BenchmarkData:
    """Local copies of the benchmarks in their official release layouts (llama2ft/evaluation/benchmark_data.py);
    None: the datasets lm-eval names on the hub. `benchmark_data=sample`: the project's own small sample."""

    ceval: Optional[str] = None  # DIR with dev/{subject}_dev.csv and val/{subject}_val.csv
    cmmlu: Optional[str] = None  # DIR with dev/{subject}.csv and test/{subject}.csv


@dataclass
class EvalConfig(GenerateConfig):
    # generate | loss | benchmark, or several in one run: task=[generate,benchmark] writes one report
    task: Any = "generate"
    models: list[Any] = field(default_factory=list)  # paths, or {name, run | path, adapter, template, system}
    # .json (AtomBulb), .csv with a question column (category, reference, qid optional) or with a `text` column
    # in the community format (its last answer is the reference); None: the built-in set (data/eval/questions.json)
    questions: Optional[str] = None
    encoding: Optional[str] = None  # csv encoding, e.g. gbk
    # llama2_inst | human_assistant | chat_template | model (each model's own training template) for every model;
    # None: per model: a run or a folder that carries its template (llama2ft-merge's) its own, any other folder
    # llama2_inst with the community's system prompt asking for Chinese (task=loss: each model's own)
    prompt_template: Optional[str] = None
    chinese_threshold: float = 0.5  # an answer is Chinese when more than this share of its letters are Chinese
    batch_size: int = 8  # answers written at a time; task=loss and task=benchmark: rows per forward pass
    max_batch: int = 8  # task=generate: questions answered together (continuous batching, answers as if alone)
    engine: str = "transformers"  # transformers | vllm (GPU, the `vllm` extra)
    data_file: Optional[str] = None  # task=loss: a csv in the community format
    max_seq_len: int = 2048  # task=loss: rows are cut like in training
    # task=benchmark (lm-evaluation-harness, the `bench` extra): lm-eval task or group names; ceval is lm-eval's
    # ceval-valid group (scored on val), cmmlu its cmmlu group (scored on test); any other lm-eval name works too
    benchmarks: list[str] = field(default_factory=lambda: ["ceval", "cmmlu"])
    benchmark_data: BenchmarkData = field(default_factory=BenchmarkData)
    num_fewshot: int = 5  # examples from dev/ before each question, as both benchmarks' papers report
    limit: Optional[int] = None  # task=benchmark: at most this many questions per subject (None: all)
    output: str = "outputs/eval"


@dataclass
class MergeConfig:
    run: Optional[str] = None  # a training run folder: base, adapter, tokenizer and template come from it
    base: Optional[str] = None  # ...or a base model folder (safetensors) with adapters applied in order
    adapters: list[str] = field(default_factory=list)
    tokenizer: Optional[str] = None  # with base=: default the last adapter's, else the base's
    template: str = "human_assistant"  # with base=: the chat template the model is published with
    system: Optional[str] = None
    base_name: Optional[str] = None  # the base named in the model card (default: the run's, or base=)
    output: Optional[str] = None
    # float16 | bfloat16 | float32; None: float16, float32 for the embedded tiny model (trained in float32)
    dtype: Optional[str] = None
    max_shard_size: str = "5GB"
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)  # base=/adapters=: as the adapters trained
    # compare the merged model's logits with base+adapter (peft) before publishing; loads the base in float32
    # besides the merged copy: cheap for small models, verify=false for 7B+ on a small machine
    verify: bool = True
    overwrite: bool = False  # replace an existing output (only once the new one is complete)


@dataclass
class ExportConfig:
    format: str = "gguf"
    source: Optional[str] = None
    output: Optional[str] = None
    # q4_k_m | q5_k_m | q6_k | q4_0 (llama.cpp's quantizer, from an f16 file) | q8_0 | f16 | f32; 1-D tensors
    # (norms) stay float32, as llama.cpp's converter does
    quant: str = "f16"
    modelfile: bool = True  # also write <output stem>.Modelfile beside the GGUF, for `ollama create`
    threads: int = 0  # threads of llama.cpp's quantizer (0: all cores)
    overwrite: bool = False  # replace an existing output (and its Modelfile), once the new one is complete


@dataclass
class VocabConfig:
    corpus: Optional[str] = None  # .txt (one text per line) or .csv (`column`; <s>Human: ...</s> markup stripped)
    column: str = "text"
    encoding: Optional[str] = None  # None: UTF-8 (a BOM is fine); e.g. gbk
    base: str = "???"  # the tokenizer folder (or cached hub id) to extend; configs/vocab.yaml: the embedded one
    # the new TOTAL number of pieces (base + added); a multiple of 32 or 64 keeps the resized embeddings unpadded
    vocab_size: Optional[int] = None
    min_frequency: int = 2  # pieces (and new characters) seen fewer times in the corpus are not added
    # longest new piece in characters (None: no limit); on templated text long pieces are fragments of
    # repeated phrases, 4 keeps pieces to word size
    max_piece_length: Optional[int] = None
    heldout: Optional[str] = None  # .txt/.csv of Chinese text not in the corpus: tokens per character reported
    output: Optional[str] = None
    overwrite: bool = False  # replace an existing output (only once the new one is complete and checked)


@dataclass
class StudioConfig:
    runs_dir: str = "outputs"  # where runs live: the studio lists them and launches new ones under it
    host: str = "127.0.0.1"  # 0.0.0.0 exposes it (and the commands it runs) to the network: set auth then
    port: int = 7870
    auth: Optional[str] = None  # user:password
    title: str = "llama2ft studio"


APP_SCHEMAS = {"chat": ChatConfig, "web": WebConfig, "serve": ServeConfig, "eval": EvalConfig,
               "merge": MergeConfig, "export": ExportConfig, "vocab": VocabConfig, "studio": StudioConfig}
