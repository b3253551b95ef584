"""Every shipped accelerate config parses as accelerate reads it (the DDP one runs in test_train_e2e)."""
from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from llama2ft import CONFIG_DIR

EXPECTED = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_parses(name):
    config = load_config_from_file(str(CONFIG_DIR / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == EXPECTED[name]
    assert config.num_processes >= 2 and config.num_machines == 1
    if name == "fsdp":
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_every_shipped_config_is_covered():
    assert {p.stem for p in (CONFIG_DIR / "accelerate").glob("*.yaml")} == set(EXPECTED)
