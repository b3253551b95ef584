"""SFT: the next-token loss on the answers of dialogues (their prompts masked), with the HF Trainer as is."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from llama2ft.data.collators import PackedCollator, PadCollator
from llama2ft.data.rows import read_rows
from llama2ft.evaluation.heldout import QA, questions_from_dialogues
from llama2ft.model.attention import packed_row_multiple
from llama2ft.training.method import Method, MethodData, MethodSettings


@dataclass
class SftSettings(MethodSettings):
    name: str = "sft"


class SFT(Method):
    name = "sft"
    Settings = SftSettings

    def problems(self, cfg: DictConfig) -> list[str]:
        if cfg.init_from is not None:
            return ["init_from: method=sft does not continue another run (the methods that do: the preference and "
                    "reward methods); for SFT set model.name_or_path"]
        return []

    def collator(self, tokenizer: Any, attention: str, cfg: DictConfig) -> Any:
        if cfg.data.packing:
            return PackedCollator(tokenizer.pad_token_id, packed_row_multiple(attention))
        return PadCollator(tokenizer.pad_token_id)

    def trainer_class(self) -> type:
        from transformers import Trainer

        return Trainer

    def group_by_length(self, cfg: DictConfig) -> bool:
        return bool(cfg.data.group_by_length and not cfg.data.packing)

    def questions(self, cfg: DictConfig, data: MethodData, limit: int) -> list[QA]:
        se = cfg.sample_eval
        if not se.enabled or cfg.data.format == "raw":  # plain texts have no questions
            return []
        dialogues = [turns for _, turns in read_rows(se.file, cfg.data).items] if se.file else data.prepared.examples
        return questions_from_dialogues(dialogues, limit)


METHOD = SFT
