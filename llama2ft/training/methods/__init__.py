"""The training methods, one file each, and the registry `llama2ft-train` picks from by `method.name`.

Adding a method: a file here with its settings dataclass, its `Method` subclass (training/method.py) and
`METHOD = <that class>`, and configs/method/<name>.yaml (its data group and what it changes); the embedded
default's toy steps for it, if it needs its own, go in configs/tiny_method/<name>.yaml (see docs/architecture.md).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from llama2ft.training.method import Method


def _discover() -> dict[str, type[Method]]:
    """Every module of this package that states its `METHOD`, by the method's name (SFT first, as the default)."""
    found: dict[str, type[Method]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "sft", m.name)):
        method = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
        if method is not None:
            found[method.name] = method
    return found


METHODS: dict[str, type[Method]] = _discover()


def get_method(name: str) -> Method:
    """The method named `name`; ValueError for an unknown name (config validation says it first)."""
    if name not in METHODS:
        raise ValueError(f"method.name={name!r}: must be one of {', '.join(METHODS)}")
    return METHODS[name]()


def method_problems(cfg: DictConfig) -> list[str]:
    """The problems of the method settings, for the config checks."""
    name = cfg.method.name
    if name not in METHODS:
        return [f"method.name={name!r}: must be one of {', '.join(METHODS)} (choose it with method=NAME)"]
    method = METHODS[name]
    # a config.yaml of a run composes untyped (reproducing a run): what matters is that every setting is there
    missing = [f.name for f in fields(method.Settings) if f.name not in cfg.method]
    if missing:
        return [f"method.name={name!r}: choose a method with its config group (method={name}), which brings its "
                f"settings ({', '.join(missing)} missing)"]
    return method().problems(cfg)


def register_schemas() -> None:
    """Each method's settings as `method_schema/<name>`: configs/train.yaml puts the chosen method's
    there (`method_schema@method: ${method}`), before the presets that change them."""
    store = ConfigStore.instance()
    for name, method in METHODS.items():
        store.store(group="method_schema", name=name, node=method.Settings)
