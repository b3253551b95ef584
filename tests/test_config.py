"""Config composition and validation: every group combination composes, errors come all at once."""
from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import APP_THREADS, compose, composer, run_app
from llama2ft import CONFIG_DIR
from llama2ft.config.validation import collect_problems, validate
from llama2ft.core.errors import ConfigError


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert set(options("model")) >= {"tiny", "llama2-7b", "llama2-7b-chat", "llama2-13b", "llama2-13b-chat",
                                     "llama2-70b", "llama2-70b-chat", "chinese-7b-chat", "chinese-13b-chat"}
    assert set(options("lora")) >= {"r8", "r16", "r64", "full"}
    assert set(options("quant")) == {"none", "int8", "nf4"}
    assert set(options("data")) >= {"sample", "csv"}
    assert set(options("template")) == {"human_assistant", "llama2_inst", "chat_template"}
    assert set(options("logger")) == {"none", "wandb", "tensorboard"}


def _check_combination(make, groups: list[str], combo: tuple[str, ...]) -> None:
    overrides = [f"{g}={o}" for g, o in zip(groups, combo)]
    if "data=csv" in overrides:
        overrides.append("data.train_file=/x.csv")
    cfg = make(overrides)
    chosen = dict(zip(groups, combo))
    assert cfg.lora.enabled == (chosen["lora"] != "full"), overrides
    assert cfg.quant.mode == chosen["quant"], overrides
    problems = collect_problems(cfg)
    impossible = chosen["lora"] == "full" and chosen["quant"] != "none"
    assert any("lora=full" in p for p in problems) == impossible, (overrides, problems)


def check_combinations(groups: list[str], combos: list[tuple[str, ...]]) -> None:
    """`_check_combination` of each combo under one Hydra initialisation (also in the second process)."""
    with composer() as make:
        for combo in combos:
            _check_combination(make, groups, combo)


@pytest.fixture(scope="module")
def second_process() -> Iterator[Optional[ProcessPoolExecutor]]:
    """A second Python process for this module's composes: a compose is ~0.1 s of pure Python on one core, so
    with a second core two processes check the hundreds of combinations in about half the time. None with
    LLAMA2FT_TEST_THREADS=1 (a machine shared with other jobs: no core to spare, the process only costs)."""
    if APP_THREADS < 2:
        yield None
        return
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def check_every_combination(pool: Optional[ProcessPoolExecutor], groups: list[str]) -> None:
    combos = list(itertools.product(*(options(g) for g in groups)))
    if pool is None:
        check_combinations(groups, combos)
        return
    other = pool.submit(check_combinations, groups, combos[1::2])
    check_combinations(groups, combos[::2])
    other.result()  # its AssertionError, if any, is raised here


def test_every_training_group_combination_composes(second_process):
    # every lora x quant x data x template x logger combination (on the default model)
    check_every_combination(second_process, ["lora", "quant", "data", "template", "logger"])


def test_every_model_with_every_adapter_and_quantization_composes(second_process):
    check_every_combination(second_process, ["model", "lora", "quant"])


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose([f"experiment={experiment}"])
    if OmegaConf.is_missing(cfg.data, "train_file"):  # experiments on your own csv need its path
        cfg = compose([f"experiment={experiment}", "data.train_file=/data/train.csv"])
    assert cfg.experiment_name == experiment
    problems = [p for p in collect_problems(cfg) if "file not found" not in p]
    assert problems == []


def test_default_is_the_embedded_tiny_run():
    cfg = compose()
    assert cfg.model.name_or_path is None and cfg.model.init.hidden_size % 32 == 0
    assert cfg.model.init.intermediate_size % 32 == 0
    assert list(cfg.lora.modules_to_save) == ["embed_tokens", "lm_head"]
    assert list(cfg.lora.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"]
    assert cfg.data.train_file.endswith("data/sample/train.csv")
    validate(cfg)  # the shipped default is valid


def test_real_models_do_not_inherit_the_tiny_recipe():
    cfg = compose(["model=llama2-7b-chat"])
    assert cfg.model.name_or_path == "meta-llama/Llama-2-7b-chat-hf"
    assert cfg.model.init is None
    assert list(cfg.lora.modules_to_save) == []
    assert cfg.trainer.use_cpu is False


def test_nf4_is_qlora():
    cfg = compose(["quant=nf4"])
    assert cfg.quant.mode == "nf4" and cfg.quant.double_quant


def test_unknown_key_is_rejected():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose(["lora.rank=8"])


def test_wrong_type_is_rejected():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(["trainer.learning_rate=fast"])


def test_value_problems_are_collected_all_at_once():
    cfg = compose(["lora=full", "quant=nf4", "trainer.learning_rate=0", "data.train_file=/nope/train.csv",
                   "data.eval_fraction=1.5", "template.name=alpaca", "data.max_seq_len=4"])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    text = str(info.value)
    for key in ("quant=nf4 with lora=full", "trainer.learning_rate=0.0", "data.train_file='/nope/train.csv'",
                "data.eval_fraction=1.5", "template.name='alpaca'", "data.max_seq_len=4"):
        assert key in text, text
    assert len(info.value.problems) >= 6


@pytest.mark.parametrize("override,needle", [
    ("lora.r=0", "lora.r=0: must be > 0"),
    ("lora.dropout=1.0", "lora.dropout=1.0: must be in [0, 1)"),
    ("lora.alpha=-1", "lora.alpha=-1"),
    ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size=0"),
    ("trainer.precision=fp8", "trainer.precision='fp8'"),
    ("data.format=json", "data.format='json'"),
    ("model.init.hidden_size=100", "model.init.hidden_size=100: must be a positive multiple of 32"),
    ("logger.report_to=[mlflow]", "logger.report_to='mlflow'"),
])
def test_each_value_check(override, needle):
    assert any(needle in p for p in collect_problems(compose([override])))


def test_cli_reports_config_errors_without_traceback(tmp_path):
    res = run_app("train", "quant=nf4", "lora.dropout=2", "lora.r=0", "trainer.learning_rate=-1",
                  f"hydra.run.dir={tmp_path}/run")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert "invalid config (3 problems)" in res.stderr
    assert not (tmp_path / "run" / "base_model").exists()  # nothing was built


def test_cli_unknown_key_without_traceback(tmp_path):
    res = run_app("train", "lora.rank=8", f"hydra.run.dir={tmp_path}/run")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "rank" in res.stderr


@pytest.mark.parametrize("overrides,strategy", [
    (["model=llama2-7b"], "group_by_length"),
    (["model=llama2-7b", "data.packing=true"], "random"),
    ([], "random"),  # the tiny preset turns grouping off: its rows are all short
])
def test_length_grouping_unless_packing(tmp_path, overrides, strategy):
    from llama2ft.training.arguments import training_arguments

    cfg = compose(overrides)
    args = training_arguments(cfg.trainer, cfg.logger, tmp_path, has_eval=False,
                              group_by_length=cfg.data.group_by_length and not cfg.data.packing)
    assert args.train_sampling_strategy == strategy


def test_optuna_search_space_composes():
    cfg = compose(["hparams_search=optuna"])
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.sweeper.direction == "minimize" and cfg.objective == "eval_loss"
    assert {"trainer.learning_rate", "lora.r", "lora.alpha", "lora.dropout"} <= set(params)


def test_slurm_launcher_composes():
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu"
