"""Hydra plumbing shared by every command: the typed schemas in Hydra's ConfigStore, the `--help` page
(listing only the groups the command composes), one entry helper that turns a `run_*(cfg)` function into a
console script, and free-text overrides."""
from __future__ import annotations

import re
import sys
from typing import Any, Callable

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from llama2ft import CONFIG_DIR
from llama2ft.config.app_schemas import APP_SCHEMAS
from llama2ft.config.groups import describe_groups
from llama2ft.config.train_schema import TrainConfig
from llama2ft.core.errors import exit_on_user_error

TEXT_KEYS = ("prompt", "system")

# Hydra's help page (hydra/help/default) with its group list replaced: Hydra lists every folder under
# configs/, this lists the groups the command composes (`hydra.runtime.choices`), internal ones left out.
# Each configs/<command>.yaml picks it with `override hydra/help: llama2ft`.
HELP = {
    "app_name": "${hydra.job.name}",
    "header": "${hydra.help.app_name}",
    "footer": "Powered by Hydra (https://hydra.cc)\nUse --hydra-help to view Hydra specific help\n",
    "template": "${hydra.help.header}\n== Configuration groups ==\n"
                "Compose your configuration from those groups (group=option)\n\n"
                "${llama2ft_groups:${hydra.runtime.choices}}\n\n== Config ==\n"
                "Override anything in the config (foo.bar=value)\n\n$CONFIG\n\n${hydra.help.footer}\n",
}


def register_schemas() -> None:
    """Make `train_schema`, `chat_schema`, ... available to the defaults lists of configs/*.yaml."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(group="hydra/help", name="llama2ft", node=HELP)
    OmegaConf.register_new_resolver("llama2ft_groups", describe_groups, replace=True)
    for name, schema in APP_SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)


def stored_app_config(name: str) -> str:
    """Serve configs/<name>.yaml from Hydra's ConfigStore instead of the configs/ folder: there,
    `quant` and `template` are training config groups, and `quant=f16` would be taken as a group choice."""
    ConfigStore.instance().store(name=f"_{name}_app", node=OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    return f"_{name}_app"


def quote_text_overrides(argv: list[str], keys: tuple[str, ...] = TEXT_KEYS) -> list[str]:
    """Quote free-text overrides (`prompt=数字 680 是什么？`) for Hydra, whose override grammar rejects
    spaces, most punctuation and Chinese outside quotes; values the user quoted are left alone."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys and value and value[0] not in "'\"":
            # Hydra's quoted strings: escape quotes, and double only the backslashes before a quote
            value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
            arg = f"{key}='" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value) + "'"
        out.append(arg)
    return out


def hydra_command(name: str, run: Callable[[DictConfig], Any], *, from_store: bool = False,
                  text_keys: tuple[str, ...] = ()) -> Callable[[], Any]:
    """The console-script entry of a command: Hydra composes configs/<name>.yaml over its schema
    (`from_store`: through the ConfigStore, see `stored_app_config`), free-text keys are quoted, and a
    UserError ends the command with one `error:` line and exit code 2."""
    register_schemas()
    config_path = None if from_store else str(CONFIG_DIR)
    config_name = stored_app_config(name) if from_store else name

    def task(cfg: DictConfig) -> Any:
        return run(cfg)

    # Hydra names the job (and the run folder's log file, e.g. train.log) after the task's module
    task.__module__ = f"llama2ft.{name}"
    _hydra_main = hydra.main(config_path=config_path, config_name=config_name, version_base="1.3")(
        exit_on_user_error(task))

    def main() -> Any:
        if text_keys:
            sys.argv[1:] = quote_text_overrides(sys.argv[1:], text_keys)
        return _hydra_main()

    return main
