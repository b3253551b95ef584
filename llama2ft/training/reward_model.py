"""A trained reward model (a run of `method=rm`, or the folder `llama2ft-merge` wrote from one) as a scorer of
answers: what GRPO's reward-model reward calls.

    rm = load_reward_model("outputs/train/RM_RUN", "cpu")
    rm.score([[Turn("human", "请用中文写出数字 244。")]], ["两百四十四"])   # [one float]

An answer is scored as the RM was trained on pairs: the conversation's prompt ids and the answer's trained
ids (`data/pair_encode.py` `prompt_ids` + `answer_ids`, through the RM's own template and tokenizer), the score
read at the last token. A run (base + adapter) and the folder merged from it give the same scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import Turn
from llama2ft.data.pair_encode import answer_ids, pad_rows, prompt_ids
from llama2ft.data.templates import Template, get_template
from llama2ft.inference.model_choice import carried_template
from llama2ft.model.loading import compute_dtype, context_length, load_model, open_tokenizer
from llama2ft.model.lora import load_adapter
from llama2ft.model.run_folder import holds_scorer, is_run_folder, read_run

def sequence_scores(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One score per row of a right-padded batch (the model's output at each row's last token), in float32."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits.squeeze(-1).float()


def is_reward_model(path: Union[str, Path]) -> bool:
    """Whether `path` is a finished run of method=rm or a reward model's folder (a sequence-classification
    model); reads config files only."""
    return holds_scorer(path)


@dataclass
class RewardModel:
    """A loaded reward model with the template and tokenizer it was trained with."""

    model: Any
    tokenizer: Any
    template: Template
    device: torch.device
    max_len: int  # the model's context: longer answers are cut, as training cut them to data.max_seq_len
    path: str
    batch_size: int = 16

    def rows(self, conversations: list[list[Turn]], completions: list[str]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids) of each completion, as the pairs it trained on were encoded."""
        if len(conversations) != len(completions):
            raise ValueError(f"{len(conversations)} conversations but {len(completions)} completions")
        convs = [tuple(turns) for turns in conversations]
        prompts = prompt_ids(self.template, self.tokenizer, convs)
        answers = answer_ids(self.template, self.tokenizer, list(zip(convs, completions)))
        for k, prompt in enumerate(prompts):
            if len(prompt) >= self.max_len:
                raise UserError(f"reward model {self.path}: conversation {k} is {len(prompt)} tokens, the model's "
                                f"whole context of {self.max_len}: no answer token would be scored")
        return [(p, a[:self.max_len - len(p)]) for p, a in zip(prompts, answers)]

    @torch.no_grad()
    def score(self, conversations: list[list[Turn]], completions: list[str]) -> list[float]:
        """The score of each completion as the answer to its conversation (ending with the user's turn)."""
        rows = self.rows(conversations, completions)
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            batch = pad_rows(rows[start:start + self.batch_size], self.tokenizer.pad_token_id)
            scores += sequence_scores(self.model, {k: v.to(self.device) for k, v in batch.items()}).tolist()
        return scores


def load_reward_model(path: str, device: Union[str, torch.device] = "cpu", batch_size: int = 16) -> RewardModel:
    """The reward model of a method=rm run folder (its base + adapter, or its model/) or of a folder merged
    from one; anything else is a UserError naming `path`."""
    folder = Path(path).expanduser()
    if not is_reward_model(folder):
        raise UserError(f"{path} is not a reward model: give a finished run of method=rm (llama2ft-train method=rm) "
                        "or the folder llama2ft-merge wrote from one")
    device = torch.device(device)
    dtype = compute_dtype("auto", use_cpu=device.type != "cuda")
    if is_run_folder(folder):
        run = read_run(folder)
        tokenizer_dir, template = str(run.tokenizer), get_template(run.template, run.system)
        if run.adapter is not None:
            model = load_model(run.base, dtype, rope_scaling=run.rope_scaling, scorer=True)
            model = load_adapter(model, str(run.adapter), run.base, scorer=True)
        else:
            model = load_model(str(run.model), dtype, scorer=True)
    else:
        name, system = carried_template(str(folder), str(folder)) or ("human_assistant", None)
        tokenizer_dir, template = str(folder), get_template(name, system)
        model = load_model(str(folder), dtype, scorer=True)
    tokenizer = open_tokenizer(tokenizer_dir, need_bos_eos=True)
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last token that is not padding
    model.to(device).eval()
    return RewardModel(model, tokenizer, template, device, context_length(model), str(path), batch_size)
