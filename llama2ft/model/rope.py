"""RoPE scaling (`model.rope_scaling`): a context longer than the positions the base was trained on.

transformers 5 keeps RoPE settings in `config.rope_parameters` (`rope_type`, `factor`, `rope_theta`,
`original_max_position_embeddings`); the old `rope_scaling` dict is read into it. The scaling is set
on the config the model is loaded with, so training, chat, merge and its check all build the same
rotary frequencies, and the merged config.json carries it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

ROPE_TYPES = ("linear", "dynamic", "yarn")


def scaling_of(node: Optional[Mapping[str, Any]]) -> Optional[dict]:
    """{rope_type, factor} of a `rope_scaling` config node, or None when it sets no scaling."""
    if not node or not node.get("rope_type"):
        return None
    return {"rope_type": str(node["rope_type"]), "factor": float(node["factor"])}


def scaled_positions(positions: int, scaling: Optional[Mapping[str, Any]]) -> int:
    """How many positions the model covers with `scaling` (None: the base's own)."""
    return positions if not scaling else int(positions * float(scaling["factor"]))


def rope_parameters(config: Any, scaling: Mapping[str, Any]) -> dict:
    """The `rope_parameters` of `config` (a transformers config) scaled as `scaling` says, and the
    max_position_embeddings to go with it.

    linear and yarn: max_position_embeddings becomes original x factor (yarn reads the original length
    from its own key; transformers warns when the two disagree). dynamic NTK keeps the original length
    in max_position_embeddings: it is the length above which transformers starts to stretch."""
    old = dict(getattr(config, "rope_parameters", None) or {})
    original = int(old.get("original_max_position_embeddings") or config.max_position_embeddings)
    theta = old.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = {"rope_type": str(scaling["rope_type"]), "factor": float(scaling["factor"]), "rope_theta": theta}
    if params["rope_type"] == "yarn":
        params["original_max_position_embeddings"] = original
    return params


def apply_rope_scaling(config: Any, scaling: Optional[Mapping[str, Any]]) -> Any:
    """Set `scaling` on a transformers config in place (nothing when None); returns the config."""
    if not scaling:
        return config
    original = int((getattr(config, "rope_parameters", None) or {}).get("original_max_position_embeddings")
                   or config.max_position_embeddings)
    config.rope_parameters = rope_parameters(config, scaling)
    if scaling["rope_type"] != "dynamic":
        config.max_position_embeddings = scaled_positions(original, scaling)
    return config


def base_positions(name_or_path: Optional[str], revision: Optional[str] = None) -> Optional[int]:
    """max_position_embeddings of a base from its config.json, read without loading the model: a local
    folder, or a hub id already in the local cache. None when it cannot be read here."""
    if not name_or_path:
        return None
    path = Path(name_or_path).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(name_or_path), "config.json", revision=revision)
        except Exception:  # not a valid repo id: the model check reports the name
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if value else None
