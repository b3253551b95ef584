"""The config groups a command composes and their options, read from its composition and configs/: what
`--help` lists for each command and the choices the studio offers. Hidden are Hydra's own groups and the
groups that other configs pick (never the user): `generate` (the generation apps' shared defaults),
`method_schema` (the chosen method's typed settings), `tiny_method` (the tiny preset's steps per method) and
`paths`."""
from __future__ import annotations

from typing import Any, Mapping

from llama2ft import CONFIG_DIR

HIDDEN = ("generate", "method_schema", "tiny_method", "paths")


def group_options(group: str) -> list[str]:
    """The options of a group: the files in configs/<group>/."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def composed_groups(choices: Mapping[str, Any]) -> dict[str, list[str]]:
    """The user-facing groups of a composition (Hydra's `hydra.runtime.choices`) with their options, by name."""
    names = {str(key).split("@")[0] for key in choices}
    names = {n for n in names if n != "hydra" and not n.startswith("hydra/") and n not in HIDDEN}
    return {name: group_options(name) for name in sorted(names) if group_options(name)}


def describe_groups(choices: Mapping[str, Any]) -> str:
    """`group: option, option` lines, what `--help` prints under "Configuration groups"."""
    groups = composed_groups(choices)
    if not groups:
        return "(none: this command has no config groups; set its keys as key=value)"
    return "\n".join(f"{name}: {', '.join(options)}" for name, options in groups.items())
