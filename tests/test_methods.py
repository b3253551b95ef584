"""The training skeleton and its methods: the skeleton never names a method, every registered method has
its config and toy recipe and composes with its own typed settings, and a preference run's embedded SFT
start is exactly the default SFT run."""
from __future__ import annotations

import ast

import pytest
from omegaconf import OmegaConf

from conftest import compose
from llama2ft import CONFIG_DIR, PROJECT_ROOT
from llama2ft.training.methods import METHODS

TRAINING = PROJECT_ROOT / "llama2ft" / "training"
# the skeleton: what runs every method, and may not depend on any of them
SKELETON = ["pipeline.py", "method.py", "model_setup.py", "answers.py", "arguments.py", "speed.py", "start.py"]


def imports_of(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


@pytest.mark.parametrize("module", SKELETON)
def test_the_skeleton_never_imports_a_method(module):
    assert not {m for m in imports_of(TRAINING / module) if m.startswith("llama2ft.training.methods")}


def test_the_check_above_sees_an_import_of_a_method(tmp_path):
    planted = tmp_path / "pipeline.py"
    planted.write_text((TRAINING / "pipeline.py").read_text() + "\nfrom llama2ft.training.methods.dpo import DPO\n")
    assert "llama2ft.training.methods.dpo" in imports_of(planted)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_its_config_recipe_and_typed_settings(name):
    method = METHODS[name]()
    assert method.name == name
    assert (CONFIG_DIR / "method" / f"{name}.yaml").is_file() and (CONFIG_DIR / "tiny_method" / f"{name}.yaml").is_file()
    cfg = compose([f"method={name}"])
    assert OmegaConf.get_type(cfg.method) is method.Settings and cfg.method.name == name
    expected_rows = {"sft": "dialogues", "kto": "completions"}.get(name, "pairs")
    assert method.rows.name == expected_rows


def test_the_embedded_sft_start_is_the_default_sft_run():
    """What `method=dpo` (or any preference method) trains first is `llama2ft-train` with no overrides."""
    from llama2ft.training.methods.sft import SftSettings
    from llama2ft.training.start import SFT_PARTS, embedded_sft_config

    default = compose([])
    for name in sorted(set(METHODS) - {"sft"}):
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
