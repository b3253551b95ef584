"""Each setting is stated once: the schemas (llama2ft/config/, the methods' settings, the sampling
defaults) hold every default, and a file under configs/ states only what its group or preset changes
(docs/architecture.md, "Configs"). A YAML value equal to what the config would have without it is a
restatement; a key the schema does not know, or a value of the wrong type, fails to compose."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from conftest import composer
from llama2ft import CONFIG_DIR
from llama2ft.config.app_schemas import APP_SCHEMAS
from llama2ft.config.hydra_app import register_schemas
from llama2ft.config.train_schema import TrainConfig

GLOBAL = "# @package _global_"
NOT_SETTINGS = ("hydra", "accelerate", "hparams_search")  # Hydra's own and accelerate's configs
PRIMARY_SCHEMAS = {"train": TrainConfig, "prepare": TrainConfig, **APP_SCHEMAS}


def own_values(path: Path) -> dict[str, Any]:
    """The dotted keys a config file sets (its defaults list and Hydra's own `hydra:` node aside), where
    they land in the composed config."""
    text = path.read_text(encoding="utf-8")
    body = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    rel = path.relative_to(CONFIG_DIR)
    prefix = "" if GLOBAL in text or len(rel.parts) == 1 else rel.parts[0] + "."
    out: dict[str, Any] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else k)
        else:
            out[prefix + key] = node

    for k, v in body.items():
        if k not in ("defaults", "hydra"):
            walk(v, k)
    return out


def files(kind: str) -> list[Path]:
    out = []
    for p in sorted(CONFIG_DIR.rglob("*.yaml")):
        rel = p.relative_to(CONFIG_DIR)
        if rel.parts[0] in NOT_SETTINGS:
            continue
        is_global = GLOBAL in p.read_text(encoding="utf-8")
        if kind == ("primary" if len(rel.parts) == 1 else "preset" if is_global else "group"):
            out.append(p)
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def as_plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("path", files("primary") + files("group"), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_a_command_or_group_file_states_no_schema_default(path):
    """A command's config and a group option of training apply right onto their schema's defaults."""
    rel = path.relative_to(CONFIG_DIR)
    schema = OmegaConf.structured(PRIMARY_SCHEMAS[rel.stem] if len(rel.parts) == 1 else TrainConfig)
    restated = {k: v for k, v in own_values(path).items()
                if not OmegaConf.is_missing(schema, k.split(".")[0]) and
                same(as_plain(OmegaConf.select(schema, k, default="<absent>", throw_on_missing=False)), v)}
    assert restated == {}, f"{rel} restates schema defaults: {restated}"


def selection(path: Path) -> list[str]:
    """Overrides that compose `path` (a preset), in the context it is written for."""
    rel = path.relative_to(CONFIG_DIR)
    group, name = rel.parts[0], rel.stem
    if group == "tiny_method":
        return [f"method={name}"]
    if group == "experiment":
        return [f"experiment={name}", "data.train_file=/data/train.csv"]
    return [f"{group}={name}"]


def _without_body(root: Path, path: Path) -> None:
    """The copy of `path` under `root` with its defaults list only."""
    body = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    target = root / path.relative_to(CONFIG_DIR)
    kept = OmegaConf.to_yaml({"defaults": body["defaults"]}) if "defaults" in body else ""
    target.write_text(f"{GLOBAL}\n{kept}", encoding="utf-8")


@pytest.mark.parametrize("path", files("preset"), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_a_preset_states_only_what_it_changes(path, tmp_path):
    """A preset (experiment, model or method file in the global package) changes the config it lands on:
    composed with and without its values, each of its keys differs."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from llama2ft.training.methods import register_schemas as register_method_schemas

    values = own_values(path)
    if not values:  # a defaults list (or comments) only
        return
    overrides = selection(path)
    with composer() as make:
        full = make(overrides)
    copy = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, copy)
    _without_body(copy, path)
    register_schemas()
    register_method_schemas()
    with initialize_config_dir(config_dir=str(copy), version_base="1.3"):
        bare = hydra_compose(config_name="train", overrides=[*overrides, "hydra.run.dir=/tmp/llama2ft-test"],
                             return_hydra_config=True)
    restated = {}
    for key, value in values.items():
        with_it = as_plain(OmegaConf.select(full, key, throw_on_resolution_failure=False))
        without = as_plain(OmegaConf.select(bare, key, throw_on_resolution_failure=False))
        if same(with_it, without):
            restated[key] = value
    assert restated == {}, f"{path.relative_to(CONFIG_DIR)} restates what the config already says: {restated}"


def test_the_checks_catch_planted_restatements(tmp_path, monkeypatch):
    """The two checks above can fail: a group file restating a default and a preset restating its group."""
    import llama2ft

    planted = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, planted)
    with (planted / "lora" / "r16.yaml").open("a", encoding="utf-8") as f:
        f.write("dropout: 0.05\n")  # the schema's default
    with (planted / "experiment" / "community_7b_qlora.yaml").open("a", encoding="utf-8") as f:
        f.write("quant:\n  mode: nf4\n")  # what its `override /quant: nf4` already says
    monkeypatch.setattr(llama2ft, "CONFIG_DIR", planted)
    monkeypatch.setitem(globals(), "CONFIG_DIR", planted)
    with pytest.raises(AssertionError, match="dropout"):
        test_a_command_or_group_file_states_no_schema_default(planted / "lora" / "r16.yaml")
    import conftest

    monkeypatch.setattr(conftest, "CONFIG_DIR", planted)
    with pytest.raises(AssertionError, match="quant.mode"):
        test_a_preset_states_only_what_it_changes(planted / "experiment" / "community_7b_qlora.yaml", tmp_path / "x")
