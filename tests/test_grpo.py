"""method=grpo as a user runs it: prompt rows (and the ids chat sends for them, on the embedded and the real
Llama-2 tokenizer), the rewards (built-ins, a user's file, TRL's own reward function, every way a reward can
fail), and a GRPO run from an SFT run with its figures, its answers log, a stop signal and the resume that
ends where the uninterrupted run ends, merge and chat."""
from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose, run_app, train_ok
from fault_points import pause_env, signal_when_paused
from llama2ft.core.errors import UserError
from llama2ft.data.dialogue import Turn
from llama2ft.data.prompt_rows import PromptRow, iter_prompts, prompt_ids_of
from llama2ft.data.templates import get_template
from llama2ft.training.rewards import RewardSet, batch_of, reward_problems
from test_train_e2e import assert_same_adapter

DATA = OmegaConf.create({"encoding": None, "format": "dialogue", "text_column": "text", "skip_bad_rows": False})


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- rows
def test_prompt_rows_from_a_prompt_column_and_from_dialogues(tmp_path):
    rows = [i.value for i in iter_prompts(write(tmp_path / "p.jsonl", """
        {"prompt": "数字 12 的中文读法是什么？", "answer": "十二", "level": 1}
        {"prompt": "<s>Human: 你好\\n</s><s>Assistant: 你好！\\n</s><s>Human: 1+1=?\\n</s>"}
        """), DATA)]
    assert rows[0].turns == (Turn("human", "数字 12 的中文读法是什么？"),) and rows[0].prompt == "数字 12 的中文读法是什么？"
    assert rows[0].columns == {"answer": "十二", "level": 1}
    assert [t.role for t in rows[1].turns] == ["human", "assistant", "human"] and rows[1].prompt.startswith("<s>Human")
    cells = [i.value for i in iter_prompts(write(tmp_path / "d.csv", '''
        text
        "<s>Human: 请用中文写出数字 7。
        </s><s>Assistant: 七
        </s>"
        '''), DATA)]
    assert cells == [PromptRow((Turn("human", "请用中文写出数字 7。"),), "请用中文写出数字 7。", {"answer": "七"})]


@pytest.mark.parametrize("content, needle", [
    ("prompt,chosen,rejected\nq,a,b\n", "is a pairs file (prompt, chosen, rejected): method=grpo learns from rewards"),
    ('{"question": "q"}\n', "an object with none of the known shapes"),
])
def test_files_that_are_not_prompts_get_one_error(tmp_path, content, needle):
    path = write(tmp_path / ("f.csv" if content.startswith("prompt") else "f.jsonl"), content)
    # no start given: the embedded SFT start would be trained first, but the data is checked before that
    res = run_app("train", "method=grpo", f"data.train_file={path}", "data.eval_file=null",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], res.stderr[-2000:]


def test_prompt_ids_are_the_ids_chat_sends(any_tokenizer):
    """The ids GRPO generates from are `llama2ft-chat`'s for the same conversation (several turns, a row's
    own system prompt), on the embedded and the real Llama-2 tokenizer."""
    from llama2ft.inference.engine import ChatModel

    rows = [PromptRow((Turn("human", "请用中文写出数字 903。"),), "q"),
            PromptRow((Turn("human", "Hello"), Turn("assistant", "你好！ How are you?"), Turn("human", " 1+1=？")), "q"),
            PromptRow((Turn("human", "写一首诗"),), "q", system="你是诗人")]
    for name in ("human_assistant", "llama2_inst"):
        template = get_template(name, "请用中文回答")
        chat = ChatModel(None, any_tokenizer, template, 4096)
        ids = prompt_ids_of(template, any_tokenizer, rows)
        for row, got in zip(rows, ids):
            assert got == chat.prompt_ids(list(row.turns), 64, system=row.system)[0], (name, row)


# ---------------------------------------------------------------- rewards
REWARDS_PY = """
def length_reward(prompts, completions, completion_ids, level, **kwargs):
    return [float(len(c)) + lv for c, lv in zip(completions, level)]
def broken(completions, **kwargs):
    raise ValueError("bad input")
def short(completions, **kwargs):
    return [1.0]
def nan(completions, **kwargs):
    return [float("nan")] * len(completions)
def none_for_empty(completions, **kwargs):
    return [None if not c else 1.0 for c in completions]
"""


def test_builtin_and_user_rewards_with_trls_signature(tmp_path, tokenizer):
    user = write(tmp_path / "my_rewards.py", REWARDS_PY)
    rows = [PromptRow((Turn("human", "q"),), "q", {"answer": "十二", "level": 2})]
    batch = batch_of(rows, 3, ["十二", "twelve", "十二十二十二十二十二十二十二十二十二十二十二十二"], [[5, 2], [6, 2], [7] * 40],
                     {"trainer_state": None})
    rewards = RewardSet(["exact_match", "chinese_answer", "repetition", "overlong", f"{user}:length_reward"],
                        [1.0, 0.5, 1.0, 1.0, 0.0], max_new_tokens=40)
    per = rewards.score(batch)
    assert per[:, 0].tolist() == [1.0, 0.0, 0.0] and per[:, 1].tolist() == [1.0, 0.0, 1.0]
    assert per[0, 2] == 0 and per[2, 2] < -0.5  # the looping answer is penalised
    assert per[:, 3].tolist() == [0.0, 0.0, -1.0]  # 40 of 40 tokens: the full overlong penalty
    assert per[:, 4].tolist() == [4.0, 8.0, 26.0]  # the row's `level` column arrived as a keyword
    assert rewards.total(per).tolist() == pytest.approx([1.5, 0.0, 0.5 + per[2, 2].item() - 1.0])
    assert rewards.names == ["exact_match", "chinese_answer", "repetition", "overlong", "length_reward"]


def test_a_reward_function_written_for_trl_runs_unchanged(tokenizer):
    """TRL's own think_format_reward (conversational format: completions as message lists)."""
    pytest.importorskip("trl")
    rows = [PromptRow((Turn("human", "q"),), "q")]
    rewards = RewardSet(["trl.rewards:think_format_reward"], None, 16, messages=True)
    batch = batch_of(rows, 2, ["<think>\nhm\n</think>\n42", "42"], [[1], [2]], {"trainer_state": None})
    assert rewards.score(batch)[:, 0].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("name, needle", [
    ("broken", "reward {file}:broken raised ValueError: bad input"),
    ("short", "reward {file}:short returned 1 values for 4 completions"),
    ("nan", "reward {file}:nan returned nan for completion 0"),
])
def test_a_reward_that_fails_stops_the_run_with_one_error_before_any_model_loads(tmp_path, name, needle, learned_run):
    user = write(tmp_path / "r.py", REWARDS_PY)
    res = run_app("train", "method=grpo", f"init_from={learned_run.path}", f"method.rewards=[{user}:{name}]",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle.format(file=user) in errors[0], res.stderr[-2000:]
    assert "model:" not in res.stdout  # stopped before the model was built


def test_unknown_and_unimportable_rewards_are_config_problems(tmp_path):
    write(tmp_path / "r.py", REWARDS_PY)
    problems = reward_problems(["exact_match", "nope", f"{tmp_path}/r.py:missing", "no_such_pkg.mod:f"], [1.0], 16)
    assert any("'nope' is not a built-in reward (chinese_answer, exact_match, repetition, overlong)" in p
               for p in problems)
    assert any("r.py:missing' cannot be imported: ImportError" in p for p in problems)
    assert any("'no_such_pkg.mod:f' cannot be imported: ModuleNotFoundError" in p for p in problems)
    assert "method.reward_weights: 1 weights for 4 rewards" in problems
    none = RewardSet([f"{tmp_path}/r.py:none_for_empty", "chinese_answer"], None, 16)
    per = none.score(batch_of([PromptRow((Turn("human", "q"),), "q")], 2, ["", "abc"], [[2], [3, 2]], {}))
    assert math.isnan(per[0, 0]) and none.total(per).tolist() == [0.0, 1.0]  # None: not scored, as in TRL
    with pytest.raises(UserError, match="needs a 'answer' column"):
        RewardSet(["exact_match"], None, 16).check_columns({"level"}, "p.csv")


def test_grpo_settings_are_checked_with_every_other_problem():
    from llama2ft.config.validation import collect_problems
    from llama2ft.training.methods import method_problems

    cfg = compose(["method=grpo", "method.num_generations=1", "method.loss_type=ppo", "method.temperature=1e-6",
                   "method.generation=tgi", "data.packing=true", "trainer.learning_rate=0"])
    problems = " | ".join(collect_problems(cfg) + method_problems(cfg))
    for needle in ("method.num_generations=1", "method.loss_type='ppo'", "method.temperature=1e-06",
                   "method.generation='tgi'", "data.packing=true", "trainer.learning_rate=0"):
        assert needle in problems


# ---------------------------------------------------------------- a run
GRPO = ["method=grpo", "trainer.max_steps=6", "trainer.save_steps=3", "trainer.eval_steps=1000",
        "trainer.logging_steps=3", "trainer.per_device_train_batch_size=4", "method.num_generations=4",
        "method.max_new_tokens=12", "trainer.save_total_limit=null", "sample_eval.max_questions=16"]


@pytest.fixture(scope="module")
def grpo_run(learned_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("grpo") / "run"
    out = train_ok(run, *GRPO, f"init_from={learned_run.path}")
    return run, out


def test_a_grpo_run_reports_its_rewards_before_after_and_while_training(grpo_run):
    run, out = grpo_run
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("reward_before", "reward_after", "reward/exact_match_before", "reward/exact_match_after",
                "exact_match_before", "exact_match_after", "train_reward", "train_reward/exact_match",
                "train_generation_share", "eval_reward"):
        assert key in metrics, key
    assert metrics["reward_before"] == metrics["exact_match_before"]  # exact match is the only reward here
    assert metrics["method"] == "grpo" and 0 < metrics["train_generation_share"] < 1
    assert "held-out reward before training:" in out and "held-out reward after training:" in out
    logged = [json.loads(line) for line in (run / "completions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {row["step"] for row in logged} == {3, 6} and len(logged) == 8  # one prompt's 4 answers, each log
    assert all(set(row["rewards"]) == {"exact_match"} and row["rewards"]["exact_match"] in (0.0, 1.0)
               for row in logged)


def test_a_sweep_summary_shows_a_grpo_runs_held_out_reward(grpo_run, tmp_path):
    from llama2ft.training import sweeps
    run, _ = grpo_run
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "0").symlink_to(run, target_is_directory=True)
    sweeps.write(tmp_path / "sweep", objective="reward_after", direction="maximize")
    with (tmp_path / "sweep" / "sweep_summary.csv").open(encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    metrics = json.loads((run / "metrics.json").read_text())
    assert row["status"] == "completed" and float(row["reward_after"]) == pytest.approx(metrics["reward_after"])
    assert "method=grpo" in row["overrides"]


def test_a_stopped_grpo_run_resumes_to_the_uninterrupted_adapter(grpo_run, learned_run, tmp_path):
    """SIGTERM during step 4: it stops with a checkpoint (exit 75); the same command ends with the adapter of
    the uninterrupted run: the answers of each step are sampled from a seed of that step."""
    straight, _ = grpo_run
    run, pauses = tmp_path / "run", tmp_path / "pauses"
    args = [*GRPO, f"init_from={learned_run.path}", f"hydra.run.dir={run}"]
    sender = signal_when_paused(pauses, "step-4", signal.SIGTERM)
    res = run_app("train", *args, env=pause_env(pauses, "step-4"))
    sender.join()
    assert res.returncode == 75, res.stderr[-3000:]
    out = train_ok(run, *args[:-1])
    assert "resuming from" in out and json.loads((run / "metrics.json").read_text())["steps_this_run"] == 2
    assert_same_adapter(straight, run, atol=1e-6)
    # the answers sampled at each step are the uninterrupted run's, each logged once
    assert (run / "completions.jsonl").read_text() == (straight / "completions.jsonl").read_text()


def test_skipping_answers_without_signal_leaves_the_run_as_it_was(grpo_run, learned_run, tmp_path):
    """With method.beta=0 the Trainer runs only the answers of nonzero advantage (rows_with_signal); a KL term of
    1e-30 runs every answer and changes nothing else: the same losses, and the same adapter up to the rounding
    of smaller batches (2e-6 after Adam's 6 steps)."""
    straight, _ = grpo_run
    run = tmp_path / "run"
    train_ok(run, *GRPO, f"init_from={learned_run.path}", "method.beta=1e-30")

    def losses(folder: Path) -> list[tuple[int, float, float]]:
        rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["frac_reward_zero_std"]) for r in rows if "loss" in r]

    skipped, full = losses(straight), losses(run)
    assert any(zero > 0 for _, _, zero in skipped)  # some answers were skipped
    assert [s for s, _, _ in skipped] == [s for s, _, _ in full]
    assert [loss for _, loss, _ in skipped] == pytest.approx([loss for _, loss, _ in full], rel=1e-5)
    assert_same_adapter(straight, run, atol=1e-5)


def test_a_grpo_run_merges_and_chats_like_any_run(grpo_run, tmp_path):
    run, _ = grpo_run
    merged = tmp_path / "merged"
    res = run_app("merge", f"run={run}", f"output={merged}")
    assert res.returncode == 0, res.stderr[-2000:]
    asked = run_app("chat", f"model.name_or_path={merged}", "prompt=请用中文写出数字 903。", "temperature=0")
    direct = run_app("chat", f"run={run}", "prompt=请用中文写出数字 903。", "temperature=0")
    assert asked.returncode == 0 and asked.stdout.strip() and asked.stdout == direct.stdout
    shutil.rmtree(merged)


def test_vllm_rollouts_hand_vllm_token_ids_and_the_adapter_of_this_step(monkeypatch, tmp_path, tokenizer):
    """method.generation=vllm on a stand-in vLLM (no GPU here): each generation saves the adapter being
    trained and passes it as a new LoRA request; prompts go in as token ids, n answers each; the answers
    come back grouped by prompt, cut after EOS."""
    import sys
    import types

    import torch

    from llama2ft.inference.sampling import Sampling
    from llama2ft.training.rollouts import VllmRollouts

    calls = []

    class LLM:
        def __init__(self, **kwargs):
            calls.append(("engine", kwargs))

        def generate(self, prompts, params, lora_request, use_tqdm):
            calls.append(("generate", prompts, params, lora_request))
            eos = tokenizer.eos_token_id
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[10 + i, 11, eos, 0][: 2 + j])
                                                   for j in range(params.n)]) for i in range(len(prompts))]

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, number, path: (name, number, path)
    for name, module in (("vllm", vllm), ("vllm.lora", types.ModuleType("vllm.lora")), ("vllm.lora.request", lora)):
        monkeypatch.setitem(sys.modules, name, module)

    class Adapter(torch.nn.Linear):
        config = types.SimpleNamespace(max_position_embeddings=64)

        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "adapter_config.json").write_text("{}")

    model = Adapter(2, 2)
    rollouts = VllmRollouts(model, tokenizer, "/base", 0.3, rank=8)
    ids, mask = torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    for step in (1, 2):
        roll = rollouts.generate(model, ids, mask, 2, Sampling(temperature=0.9, max_new_tokens=8), seed=step)
    engine, *generations = calls
    assert engine[1]["enable_lora"] is True and engine[1]["model"] == "/base" and engine[1]["max_lora_rank"] == 8
    _, prompts, params, request = generations[-1]
    assert prompts == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7, 8, 9]}]
    assert params.n == 2 and params.temperature == 0.9 and params.seed == 2 and params.max_tokens == 8
    assert request[1] == 2 and Path(request[2]).name == "v2" and (Path(request[2]) / "adapter_config.json").is_file()
    assert [r[1] for _, _, _, r in generations] == [1, 2]  # a new adapter version each step
    assert roll.completion_mask.sum(1).tolist() == [2, 3, 2, 3] and roll.truncated.tolist() == [True, False] * 2
    assert roll.prompt_ids.shape[0] == 4 and roll.prompt_ids[1].tolist() == [0, 5, 6]


def test_a_reward_model_folder_is_a_reward(tmp_path, tokenizer):
    """method.rewards=[FOLDER] for a reward model (a folder as llama2ft-merge writes one from a method=rm run):
    each answer is scored as the RM scores it on its own (its template and tokenizer), in a batch of several."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from llama2ft.model.run_folder import write_chat_meta
    from llama2ft.training.reward_model import load_reward_model

    folder = tmp_path / "rm"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_chat_meta(folder, "human_assistant", None)
    rewards = RewardSet([str(folder), "chinese_answer"], [0.5, 1.0], 16)
    rewards.load("cpu")
    rows = [PromptRow((Turn("human", "请用中文写出数字 903。"),), "q"), PromptRow((Turn("human", "1+1=？"),), "q")]
    answers = ["九百零三", "nine hundred three", "二", "two"]
    per = rewards.score(batch_of(rows, 2, answers, [[1]] * 4, {}))
    alone = load_reward_model(str(folder)).score([list(rows[k // 2].turns) for k in range(4)], answers)
    assert per[:, 0].tolist() == pytest.approx(alone, abs=1e-5) and len(set(alone)) == 4
    assert rewards.names == ["rm", "chinese_answer"]
    assert rewards.total(per).tolist() == pytest.approx([0.5 * a + c for a, c in zip(alone, [1, 0, 1, 0])], abs=1e-5)
    with pytest.raises(UserError, match="is a folder but not a reward model"):
        RewardSet([str(tmp_path)], None, 16)


def test_the_chinese_answer_data_is_what_its_script_writes(tmp_path):
    """data/chinese_answer/ is written by scripts/make_chinese_answer_data.py, byte for byte; its SFT rows answer
    about half the questions that ask for Chinese in English, its prompts carry no answers, its held-out
    questions all ask for Chinese and have Chinese references."""
    import csv
    import subprocess
    import sys

    from llama2ft import PROJECT_ROOT
    from llama2ft.evaluation.metrics import chinese_share

    subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "make_chinese_answer_data.py"), "--out-dir",
                    str(tmp_path)], check=True, capture_output=True)
    shipped = PROJECT_ROOT / "data" / "chinese_answer"
    for name in ("sft.csv", "prompts.csv", "dev.csv"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    prompts = list(csv.DictReader((shipped / "prompts.csv").open(encoding="utf-8")))
    assert set(prompts[0]) == {"prompt"} and len(prompts) > 1000
    answers = [i.value.columns["answer"] for i in iter_prompts(str(shipped / "sft.csv"), DATA)]
    asked = {r["prompt"] for r in prompts}
    rows = [i.value for i in iter_prompts(str(shipped / "sft.csv"), DATA) if i.value.prompt in asked]
    english = sum(chinese_share(r.columns["answer"]) == 0 for r in rows) / len(rows)
    assert 0.4 < english < 0.6 and len(answers) == 2000
    dev = [i.value for i in iter_prompts(str(shipped / "dev.csv"), DATA)]
    assert len(dev) == 45 and all(chinese_share(r.columns["answer"]) == 1.0 for r in dev)


@pytest.mark.slow
def test_the_chinese_answer_reward_alone_raises_the_chinese_answer_rate(learned_run, tmp_path):
    """Prompts only (no answers) and `chinese_answer`: GRPO moves a model's answers to Chinese. Here the questions
    whose right answer is Arabic digits (the learned run answers them with digits, no letters: 0% Chinese), so
    the reward pulls against what the model learned; llama2ft-eval measures the rate before and after."""
    import csv

    from llama2ft import PROJECT_ROOT

    rows = [i.value for i in iter_prompts(str(PROJECT_ROOT / "data" / "sample" / "train.csv"), DATA)]
    asked = [r.prompt for r in rows if "阿拉伯" in r.prompt and len(r.turns) == 1]
    prompts, held = tmp_path / "prompts.csv", tmp_path / "held.csv"
    for path, values in ((prompts, asked[:-16]), (held, asked[-16:])):
        with path.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([["prompt"], *[[v] for v in values]])
    run = tmp_path / "grpo"
    train_ok(run, "method=grpo", f"init_from={learned_run.path}", f"data.train_file={prompts}",
             f"data.eval_file={held}", "method.rewards=[chinese_answer]", "trainer.max_steps=20",
             "trainer.learning_rate=3e-4", "trainer.eval_steps=1000", "method.max_new_tokens=12",
             "method.temperature=1.0", "sample_eval.enabled=false")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reward/chinese_answer_before"] < 0.2 and metrics["reward/chinese_answer_after"] > 0.6
    questions = tmp_path / "q.csv"
    questions.write_text("question\n" + "\n".join(asked[-16:]) + "\n", encoding="utf-8")
    res = run_app("eval", f"models=[{{name:start,run:{learned_run.path}}},{{name:grpo,run:{run}}}]",
                  f"questions={questions}", f"output={tmp_path / 'eval'}", "max_new_tokens=12")
    assert res.returncode == 0, res.stderr[-2000:]
    rates = {m: s["overall"]["chinese_answer_rate"]
             for m, s in json.loads((tmp_path / "eval" / "metrics.json").read_text())["models"].items()}
    assert rates["start"] < 0.2 and rates["grpo"] > 0.6, rates
