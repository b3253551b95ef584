"""GGUF export of a merged Llama folder (llama2ft-merge output) for llama.cpp.

Tensors are streamed: read one at a time from the safetensors and written straight into the file.
Tokenizer: llama.cpp's "llama" (sentencepiece-style) tokenizer. Our tokenizers are byte-fallback BPE
with `▁` for spaces, which is what that tokenizer implements; the BPE merges become scores (earlier
merge = higher score), so its greedy highest-score merging reproduces the BPE merge order. llama.cpp's
"gpt2" tokenizer would be wrong here: it expects byte-level (GPT-2 alphabet) BPE.

The file carries what llama.cpp needs to prompt the model as it trained: the tokenizer's chat_template
(`tokenizer.chat_template`, named ones as `tokenizer.chat_template.NAME`), BOS/EOS/pad ids, and whether
the tokenizer adds BOS/EOS and a `▁` in front of a text, all decided from what the tokenizer does.
f32/f16/q8_0 are written here; q4_0 and the k-quants are made from an f16 (or f32) file by llama.cpp's
own quantizer (`llama_model_quantize` in llama-cpp-python), which also picks llama.cpp's fallback type
for a tensor whose rows a k-quant cannot take (not a multiple of 256).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llama2ft.core.errors import UserError
from llama2ft.publishing.safetensors_stream import TensorInfo, TensorReader, base_tensors, read_tensor

DIRECT = ("f16", "q8_0", "f32")  # written by this module
# made by llama.cpp's quantizer from an unquantized file: quant -> llama_cpp's file type constant
LLAMA_CPP_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
QUANTS = ("q4_k_m", "q5_k_m", "q6_k", "q4_0", "q8_0", "f16", "f32")
LAYER_NAMES = {  # HF suffix in model.layers.N -> GGUF name in blk.N
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def gguf_name(hf: str) -> str:
    if hf in TOP_NAMES:
        return TOP_NAMES[hf]
    parts = hf.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}"
    raise UserError(f"tensor {hf} has no GGUF Llama name (is the source a LlamaForCausalLM?)")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores q/k rows with rotary halves split (rotate_half); llama.cpp's rope wants the original
    interleaved pairs. Same permutation as llama.cpp's convert_hf_to_gguf.py (with n_head_kv for k)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_config(source: Path) -> dict:
    path = source / "config.json"
    if not path.is_file():
        raise UserError(f"{source} has no config.json; pass source=<output folder of llama2ft-merge>")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "llama":
        raise UserError(f"{source} is a {cfg.get('model_type')!r} model; only Llama models export to GGUF here")
    return cfg


def tensor_dtype(quant: str, info: TensorInfo) -> tuple[Any, int]:
    """(GGML type, bytes) of one tensor: 1-D (norms) stay F32 as in llama.cpp's converter."""
    from gguf import GGMLQuantizationType as Q

    n = int(np.prod(info.shape))
    if len(info.shape) == 1 or quant == "f32":
        return Q.F32, n * 4
    if quant == "q8_0" and info.shape[-1] % 32 == 0:
        return Q.Q8_0, n // 32 * 34  # blocks of 32 int8 + one f16 scale
    return Q.F16, n * 2


def converted(name: str, info: TensorInfo, qtype: Any, cfg: dict, reader: Optional[TensorReader] = None) -> np.ndarray:
    """The tensor as GGUF stores it (permuted for q/k, cast or quantized)."""
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    w = (reader.read(info) if reader else read_tensor(info)).to(torch.float32).numpy()
    if name.endswith("attn_q.weight"):
        w = permute_qk(w, cfg["num_attention_heads"])
    elif name.endswith("attn_k.weight"):
        w = permute_qk(w, cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    if qtype == Q.Q8_0:
        return quants.quantize(w, Q.Q8_0)
    return np.ascontiguousarray(w.astype(np.float16 if qtype == Q.F16 else np.float32))


def adds_space_prefix(tok: Any) -> bool:
    """Whether the tokenizer puts a `▁` in front of a text it encodes, as llama.cpp's add_space_prefix
    does: decided from what it does (the first piece of a probe word), not from how tokenizer.json
    spells it (a Prepend normalizer, a Metaspace with prepend_scheme always or first, legacy or not)."""
    ids = tok("Human", add_special_tokens=False)["input_ids"]
    return bool(ids) and tok.convert_ids_to_tokens(ids[0]).startswith("\u2581")


def adds_bos_eos(tok: Any) -> tuple[bool, bool]:
    """Whether the tokenizer adds BOS / EOS around a text (add_special_tokens=True), as it does."""
    ids = tok("a")["input_ids"]
    return (bool(ids) and ids[0] == tok.bos_token_id and tok.bos_token_id is not None,
            bool(ids) and ids[-1] == tok.eos_token_id and tok.eos_token_id is not None)


def chat_templates(source: Path, tok: Any) -> Any:
    """The chat template(s) the GGUF carries: the tokenizer's (a string, or named ones as a list
    of {name, template}); for a llama2ft folder merged before templates were written into the
    tokenizer, the one made from its llama2ft.json; else None."""
    from llama2ft.data.chat_formats import published_template
    from llama2ft.data.templates import get_template
    from llama2ft.model.run_folder import read_chat_meta

    current = tok.chat_template
    if isinstance(current, dict):
        return [{"name": name, "template": text} for name, text in current.items()]
    if current:
        return current
    meta = read_chat_meta(source)
    if meta.get("template") in ("human_assistant", "llama2_inst"):
        return published_template(get_template(meta["template"], meta.get("system")), tok)
    return None


def vocab_entries(source: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int], Any]:
    """Tokens, scores, token types and the tokenizer (padded with unused tokens up to vocab_size)."""
    from gguf import TokenType
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    spec = json.loads((source / "tokenizer.json").read_text(encoding="utf-8")) if (source / "tokenizer.json").is_file() else None
    model = (spec or {}).get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise UserError(f"{source}: only byte-fallback BPE tokenizers (tokenizer.json, Llama style) are supported")
    rank = {}
    for i, m in enumerate(model.get("merges", [])):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        rank.setdefault(a + b, i)
    specials = {t.get("content") for t in spec.get("added_tokens", []) if t.get("special")}
    by_id = {i: t for t, i in tok.get_vocab().items()}
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]".encode()); scores.append(-1e4); types.append(TokenType.UNUSED)
            continue
        tokens.append(text.encode("utf-8"))
        scores.append(-float(rank[text] + 1) if text in rank else 0.0)
        if i == tok.unk_token_id:
            types.append(TokenType.UNKNOWN)
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(TokenType.BYTE)
        elif text in specials:
            types.append(TokenType.CONTROL)
        else:
            types.append(TokenType.NORMAL)
    return tokens, scores, types, tok


def rope_scaling_keys(rope: dict) -> list[tuple[str, Any]]:
    """(GGUFWriter method, value) pairs of a config's RoPE scaling, the keys llama.cpp reads
    (`llama.rope.scaling.type`, `.factor`, `.original_context_length`). llama.cpp has no dynamic NTK:
    a GGUF without the scaling would be another model, so that is one UserError."""
    import gguf

    kind = rope.get("rope_type", "default")
    if kind == "default":
        return []
    if kind == "linear":
        return [("add_rope_scaling_type", gguf.RopeScalingType.LINEAR),
                ("add_rope_scaling_factor", float(rope["factor"]))]
    if kind == "yarn":
        return [("add_rope_scaling_type", gguf.RopeScalingType.YARN),
                ("add_rope_scaling_factor", float(rope["factor"])),
                ("add_rope_scaling_orig_ctx_len", int(rope["original_max_position_embeddings"]))]
    raise UserError(f"the model uses RoPE scaling {kind!r}, which llama.cpp (GGUF) does not have; "
                    "train with model.rope_scaling.rope_type=linear or yarn to export it")


def add_tokenizer(w: Any, source: Path, vocab_size: int) -> Any:
    """The tokenizer's keys: vocabulary, special ids, what it adds, its chat template(s)."""
    tokens, scores, types, tok = vocab_entries(source, vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    if tok.unk_token_id is not None:
        w.add_unk_token_id(tok.unk_token_id)
    w.add_pad_token_id(tok.pad_token_id if tok.pad_token_id is not None else tok.unk_token_id)
    bos, eos = adds_bos_eos(tok)
    w.add_add_bos_token(bos)
    w.add_add_eos_token(eos)
    # Llama-2's tokenizer puts a `▁` in front of every text it encodes (after each special token too), the
    # embedded one does not: llama.cpp must do the same to tokenize typed prompts as transformers does
    w.add_add_space_prefix(adds_space_prefix(tok))
    templates = chat_templates(source, tok)
    if templates:
        w.add_chat_template(templates)
    return tok


def unquantized_type(source: Path) -> str:
    """The type of the file llama.cpp quantizes from: f32 when the weights are float32, else f16."""
    return "f32" if any(info.dtype == "float32" and len(info.shape) == 2 for info in base_tensors(source).values()) \
        else "f16"


def quantize(source_gguf: Path, output: Path, quant: str, threads: int = 0) -> dict[str, int]:
    """llama.cpp's quantizer (as `llama-quantize` runs it): tensor by tensor from `source_gguf`. Its
    per-tensor log is kept back: its warnings (e.g. how many tensors took a fallback type) are printed,
    and the end of it goes into the error when it fails. Returns how many tensors got each type."""
    import ctypes

    try:
        import llama_cpp
        from llama_cpp._logger import llama_log_callback as default_log  # llama-cpp-python's own
    except ImportError as exc:
        raise UserError(f"quant={quant} uses llama.cpp's quantizer: pip install 'llama2ft[quantize]' "
                        "(llama-cpp-python)") from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_CPP_QUANTS[quant])
    params.nthread = threads  # 0: llama.cpp's default (the machine's cores)
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: Any) -> None:
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        failed = llama_cpp.llama_model_quantize(str(source_gguf).encode(), str(output).encode(), ctypes.byref(params))
    finally:
        llama_cpp.llama_log_set(default_log, ctypes.c_void_p(0))
    log = "".join(lines).splitlines()
    for line in log:
        if "WARNING" in line:
            print(f"llama.cpp: {line.split(': ', 1)[-1].strip()}", flush=True)
    if failed:
        raise UserError(f"llama.cpp could not quantize {source_gguf} to {quant}: " + " | ".join(log[-3:]))
    return tensor_types(output)


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of a GGUF file have each type, e.g. {"Q4_K": 193, "Q6_K": 33, "F32": 65}."""
    from collections import Counter

    import gguf

    return dict(Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors).most_common())


def write_gguf(source: Path, output: Path, quant: str) -> int:
    """Write the GGUF file (to `output`, caller makes it atomic); returns the number of tensors."""
    import gguf

    cfg = read_config(source)
    tensors = base_tensors(source)
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    scaling = rope_scaling_keys(rope)
    w = gguf.GGUFWriter(str(output), "llama")
    w.add_name(source.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(cfg.get("head_dim") or hidden // heads)
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    for method, value in scaling:
        getattr(w, method)(value)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    add_tokenizer(w, source, cfg["vocab_size"])
    plan = [(gguf_name(k), info, *tensor_dtype(quant, info)) for k, info in tensors.items()
            if not k.endswith("rotary_emb.inv_freq")]
    for name, info, qtype, nbytes in plan:
        shape = list(info.shape)
        if qtype == gguf.GGMLQuantizationType.Q8_0:
            w.add_tensor_info(name, [*shape[:-1], shape[-1] // 32 * 34], np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float16 if qtype == gguf.GGMLQuantizationType.F16
                                                    else np.float32), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    reader = TensorReader()
    for name, info, qtype, _ in plan:  # one tensor in memory at a time, written before the next is read
        w.write_tensor_data(converted(name, info, qtype, cfg, reader))
    w.close()
    return len(plan)
