"""A preference run (method=dpo / orpo), top to bottom: start -> pairs -> model -> reference -> train -> save.

It writes the same run folder as SFT (config.yaml, data_stats.json, adapter/ or model/, tokenizer/,
loss.png, metrics.json), so merge, chat, web, API and eval take it as they take an SFT run.

Starting from an SFT run (`init_from=RUN_DIR`), its adapter keeps training: the run's base, adapter,
tokenizer and template are reused, and the DPO run folder is a plain LoRA run on that base. Merging the
SFT adapter first would need the merged base written somewhere (a second 13 GB copy for a 7B model)
for merge/chat to find it; a continued adapter needs nothing new. The reference is the SFT model itself
(its log-probs are computed once before training, see `training/preference.py`).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from llama2ft.data.encode import write_stats
from llama2ft.data.pairs import PairCollator, PairSplits, as_features, pair_summary, prepare_pairs
from llama2ft.data.templates import Template, get_template
from llama2ft.evaluation.heldout import QA, exact_match_rate, greedy_answers
from llama2ft.model.loading import count_parameters, load_tokenizer, quantized_layers
from llama2ft.model.run_folder import is_run_folder, read_chat_meta, read_run
from llama2ft.training import distributed
from llama2ft.training.arguments import training_arguments
from llama2ft.training.preference import (all_pair_logps, likelihood_accuracy, preference_accuracy,
                                          preference_trainer_class)
from llama2ft.training.recipe import _model, _save, check_run_dir, say, step_counter
from llama2ft.training.reference import reference_logps


def adopt_start(cfg: DictConfig, out_dir: Path) -> Optional[str]:
    """Point `cfg` (saved as the run's config.yaml) at what `init_from` holds: an SFT run's base, tokenizer,
    template and LoRA settings, or a merged folder's model, tokenizer and template. Returns the adapter
    to keep training (None: a fresh adapter, or full fine-tuning)."""
    if cfg.init_from is None:
        return None
    start = Path(cfg.init_from).expanduser().resolve()
    with open_dict(cfg):
        if not is_run_folder(start):  # a merged (or any full) model folder
            cfg.model.name_or_path, cfg.model.tokenizer, cfg.model.init = str(start), str(start), None
            meta = read_chat_meta(start)
            if meta:
                cfg.template.name, cfg.template.system = meta["template"], meta.get("system")
            return None
        run = read_run(start)
        cfg.template.name, cfg.template.system = run.template, run.system
        cfg.model.tokenizer = str(run.tokenizer.resolve())
        for key, value in run.cfg.lora.items():  # the adapter keeps its own shape
            cfg.lora[key] = value
        if run.tiny:  # the embedded base is small: copy it, so the new run folder stands on its own
            if distributed.is_main_process() and not (out_dir / "base_model").exists():
                shutil.copytree(run.path / "base_model", out_dir / "base_model")
            for key, value in run.cfg.model.init.items():
                cfg.model.init[key] = value
        else:
            cfg.model.name_or_path = run.cfg.model.name_or_path
        for key in ("revision", "trust_remote_code", "resize_init"):
            cfg.model[key] = run.cfg.model[key]
        if run.model is not None:  # an SFT run that fine-tuned in full: its model/ is the start
            cfg.model.name_or_path = str(run.model.resolve())
            return None
        return str(run.adapter.resolve())


def show_answers(model: Any, tokenizer: Any, template: Template, splits: PairSplits, when: str, show: int,
                 max_new_tokens: int) -> Optional[float]:
    """Greedy answers to the held-out prompts (exact match against the chosen answers), a few printed."""
    if not splits.eval_pairs or not distributed.is_main_process():
        return None
    qas = [QA(p.turns, p.chosen) for p in splits.eval_pairs]
    answers = greedy_answers(model, tokenizer, template, qas, max_new_tokens)
    model.train()
    rate = exact_match_rate(answers, qas)
    print(f"greedy answers {when}: {rate:.0%} equal the chosen answer on {len(qas)} held-out prompts", flush=True)
    for pair, answer in list(zip(splits.eval_pairs, answers))[:show]:
        mark = "chosen" if answer.strip() == pair.chosen else "REJECTED" if answer.strip() == pair.rejected else "other"
        print(f"  Q: {pair.turns[-1].text}\n    A: {answer!r} ({mark}; chosen {pair.chosen!r}, rejected {pair.rejected!r})",
              flush=True)
    return rate


def heldout_accuracy(cfg: DictConfig, model: Any, features: list[dict], refs: Optional[list], collator: Any,
                     when: str) -> dict[str, float]:
    """Preference accuracy (and plain likelihood accuracy) on the held-out pairs, printed."""
    if not features or not distributed.is_main_process():
        return {}
    logps = all_pair_logps(model, features, collator, cfg.trainer.per_device_eval_batch_size)
    acc, lik = preference_accuracy(cfg.method.name, logps, refs), likelihood_accuracy(logps)
    how = ("chosen gains more log-probability over the reference than rejected" if cfg.method.name == "dpo"
           else "chosen has the higher per-token log-probability")
    print(f"\npreference accuracy {when}: {acc:.0%} on {len(features)} held-out pairs ({how}); "
          f"chosen more likely than rejected: {lik:.0%}", flush=True)
    return {"preference_accuracy": acc, "likelihood_accuracy": lik}


def run_preference(cfg: DictConfig, out_dir: Path, resume: bool) -> dict:
    """Train `cfg.method` on pairs (the config is validated); returns the run's metrics. The model, the
    run-folder checks and the save are the SFT recipe's own, so both methods make a run folder alike."""
    from transformers.trainer_utils import get_last_checkpoint

    distributed.check_backend()
    check_run_dir(out_dir, resume)
    adapter = adopt_start(cfg, out_dir)
    tokenizer = load_tokenizer(cfg.model)
    template = get_template(cfg.template.name, cfg.template.system)
    with distributed.main_process_first():
        splits = prepare_pairs(cfg.data, template, tokenizer, cfg.trainer.seed)
    if distributed.is_main_process():
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
        write_stats(splits.stats, out_dir)
    say(f"method={cfg.method.name} (beta={cfg.method.beta}" + (f", loss_type={cfg.method.loss_type})"
        if cfg.method.name == "dpo" else ")") + (f", starting from {cfg.init_from}" if cfg.init_from else ""))
    say(pair_summary(splits.stats))

    model, base, _, speed = _model(cfg, tokenizer, out_dir, adapter)
    trainable, total = count_parameters(model)
    quantized = quantized_layers(model)
    say(f"model: {base} ({total:,} parameters, {trainable:,} trainable, quant={cfg.quant.mode})"
        + (f"; continuing the adapter {adapter}" if adapter else ""))
    collator = PairCollator(tokenizer.pad_token_id)
    train_f, eval_f = as_features(splits.train), as_features(splits.eval)
    refs_train = refs_eval = None
    if cfg.method.name == "dpo":  # the reference: the model as training starts, scored once
        started = time.time()
        device = torch.device(f"cuda:{distributed.local_rank()}" if torch.cuda.is_available()
                              and not cfg.trainer.use_cpu else "cpu")
        refs_train = reference_logps(model, train_f, collator, cfg.trainer.per_device_eval_batch_size, device)
        refs_eval = reference_logps(model, eval_f, collator, cfg.trainer.per_device_eval_batch_size, device)
        train_f, eval_f = as_features(splits.train, refs_train), as_features(splits.eval, refs_eval)
        say(f"reference log-probs of {len(train_f) + len(eval_f)} pairs in {time.time() - started:.1f} s "
            "(the starting model; no second copy is kept)")
    before = heldout_accuracy(cfg, model, eval_f, refs_eval, collator, "before training")
    em_before = show_answers(model, tokenizer, template, splits, "before training", cfg.sample_eval.show,
                             cfg.sample_eval.max_new_tokens)

    # Liger's fused loss is for next-token labels; preference losses read the logits themselves
    args = training_arguments(cfg.trainer, cfg.logger, out_dir, bool(eval_f), False,
                              checkpointing=speed.checkpointing.enabled)
    args.prediction_loss_only = True  # eval reports the method's loss and rewards, not logits
    steps = step_counter()
    trainer = preference_trainer_class()(model=model, args=args, train_dataset=train_f, eval_dataset=eval_f or None,
                                         data_collator=collator, processing_class=tokenizer, callbacks=[steps],
                                         method=cfg.method)
    resume_from = get_last_checkpoint(args.output_dir) if resume and Path(args.output_dir).is_dir() else None
    started = time.time()
    metrics = dict(trainer.train(resume_from_checkpoint=resume_from).metrics)
    if eval_f:
        metrics.update(trainer.evaluate())
    metrics.update(wall_seconds=round(time.time() - started, 2), trainable_parameters=trainable,
                   steps_this_run=steps.count, quantized_layers=quantized, method=cfg.method.name)
    last = next((h for h in reversed(trainer.state.log_history) if "rewards/margins" in h), {})
    metrics.update({k: v for k, v in last.items() if k.startswith("rewards/")})
    after = heldout_accuracy(cfg, trainer.model, eval_f, refs_eval, collator, "after training")
    em_after = show_answers(trainer.model, tokenizer, template, splits, "after training", cfg.sample_eval.show,
                            cfg.sample_eval.max_new_tokens)
    for key in before:
        metrics[f"{key}_before"], metrics[f"{key}_after"] = before[key], after[key]
    if em_before is not None:
        metrics["chosen_match_before"], metrics["chosen_match_after"] = em_before, em_after
    if trainer.is_world_process_zero():
        _save(trainer, tokenizer, cfg, out_dir, metrics)
    distributed.barrier()
    return metrics
