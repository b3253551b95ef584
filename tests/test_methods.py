"""The training skeleton and its methods: the skeleton never names a method, a method is found by its file
alone, every method has its config and composes with its own typed settings, and the embedded SFT start of a
method that continues an SFT model is exactly the default SFT run."""
from __future__ import annotations

import ast

import pytest
from omegaconf import OmegaConf

from conftest import compose
from llama2ft import CONFIG_DIR, PROJECT_ROOT
from llama2ft.training.methods import METHODS

TRAINING = PROJECT_ROOT / "llama2ft" / "training"
# the skeleton: what runs every method, and may not depend on any of them
SKELETON = ["pipeline.py", "method.py", "model_setup.py", "answers.py", "arguments.py", "speed.py", "start.py",
            "methods/__init__.py"]


def imports_of(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


@pytest.mark.parametrize("module", SKELETON)
def test_the_skeleton_never_imports_a_method(module):
    assert not {m for m in imports_of(TRAINING / module) if m.startswith("llama2ft.training.methods.")}


def test_the_check_above_sees_an_import_of_a_method(tmp_path):
    planted = tmp_path / "pipeline.py"
    planted.write_text((TRAINING / "pipeline.py").read_text() + "\nfrom llama2ft.training.methods.dpo import DPO\n")
    assert "llama2ft.training.methods.dpo" in imports_of(planted)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_its_config_and_typed_settings_and_reads_its_default_data(name):
    """A method is its file and configs/method/<name>.yaml: it composes with its own typed settings (the toy
    steps of configs/tiny_method/ are optional), and the data its config chooses reads as its kind of rows."""
    from llama2ft.data.pipeline import check_inputs

    method = METHODS[name]()
    assert method.name == name and (CONFIG_DIR / "method" / f"{name}.yaml").is_file()
    cfg = compose([f"method={name}"])
    assert OmegaConf.get_type(cfg.method) is method.Settings and cfg.method.name == name
    checked = check_inputs(cfg.data, cfg.trainer.seed, method.rows)
    assert sum(len(scan.rows) for scan in checked.train) > 0 and not any(scan.skipped for scan in checked.train)


def test_the_registry_finds_a_method_by_its_file_alone(tmp_path, monkeypatch):
    """Adding a method needs no edit of the registry: a module of training/methods that states METHOD is found."""
    import importlib
    import sys

    import llama2ft.training.methods as registry

    (tmp_path / "mine.py").write_text(
        "from dataclasses import dataclass\n"
        "from llama2ft.training.method import Method, MethodSettings\n"
        "@dataclass\nclass MineSettings(MethodSettings):\n    name: str = 'mine'\n"
        "class Mine(Method):\n    name = 'mine'\n    Settings = MineSettings\n"
        "METHOD = Mine\n", encoding="utf-8")
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "llama2ft.training.methods.mine", raising=False)
    try:
        found = registry._discover()
    finally:
        sys.modules.pop("llama2ft.training.methods.mine", None)
    assert "mine" in found and set(METHODS) < set(found) and next(iter(found)) == "sft"
    importlib.invalidate_caches()


def test_the_embedded_sft_start_is_the_default_sft_run():
    """What `method=dpo` (or any preference method) trains first is `llama2ft-train` with no overrides."""
    from llama2ft.training.methods.sft import SftSettings
    from llama2ft.training.start import SFT_PARTS, embedded_sft_config

    default = compose([])
    for name in sorted(n for n, m in METHODS.items() if m.starts_from_sft):
        sft = embedded_sft_config(compose([f"method={name}"]), OmegaConf.structured(SftSettings))
        for part in (*SFT_PARTS, "method", "sample_eval"):
            assert OmegaConf.to_container(sft[part], resolve=True) == \
                OmegaConf.to_container(default[part], resolve=True), (name, part)
        assert sft.init_from is None


def test_a_start_is_a_new_config_and_the_old_one_is_untouched(tmp_path):
    """init_from gives a new config pointing at the start; the composed one keeps what the user asked."""
    from llama2ft.model.run_folder import RunDir
    from llama2ft.training.start import from_init

    sft = RunDir(tmp_path / "sft")
    sft.path.mkdir()
    sft_cfg = compose(["lora=r16", "template=llama2_inst"])
    sft.write_config(OmegaConf.create({k: OmegaConf.to_container(sft_cfg[k], resolve=True)
                                       for k in ("model", "lora", "quant", "template")}))
    sft.adapter.mkdir()
    cfg = compose(["method=dpo", f"init_from={sft.path}"])
    before = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "lora", "template")}
    new, start = from_init(cfg)
    assert {k: OmegaConf.to_container(cfg[k], resolve=True) for k in before} == before
    assert new.lora.r == 16 and new.template.name == "llama2_inst" and new.init_from == str(sft.path)
    assert start.trained_adapter == str(sft.adapter.resolve()) and start.base_model == sft.base_model
