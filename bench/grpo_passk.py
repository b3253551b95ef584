"""Greedy accuracy, sampled accuracy and pass@k per kind of question of the embedded task, for a run: how much an
exact-match reward can teach (GRPO learns only from answers it samples). See docs/measurements.md.

    .venv/bin/python bench/grpo_passk.py RUN [--temperature 0.7] [--k 16] [--questions data/sample/dev.csv]
"""
from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf

from llama2ft.data.rows import read_rows
from llama2ft.inference.loader import load_chat_model
from llama2ft.inference.model_choice import ModelSpec
from llama2ft.inference.sampling import Sampling


def kind(question: str) -> str:
    return "arabic" if "阿拉伯" in question else ("digits" if "逐位" in question or "一位一位" in question else "read")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--questions", default="data/sample/dev.csv")
    args = ap.parse_args()
    chat = load_chat_model(ModelSpec(run=args.run))
    data = OmegaConf.create({"encoding": None, "format": "dialogue", "text_column": "text", "skip_bad_rows": False})
    sampled = Sampling(temperature=args.temperature, top_p=1.0, top_k=0, repetition_penalty=1.0, max_new_tokens=16,
                       seed=1)
    greedy = Sampling(do_sample=False, repetition_penalty=1.0, max_new_tokens=16)
    stats: dict[str, list[float]] = {}
    for _, turns in read_rows(args.questions, data).items:
        asked, wanted = turns[:-1], turns[-1].text.strip()
        hits = sum(r.text.strip() == wanted for r in chat.chat_batch([asked] * args.k, sampled, batch_size=args.k))
        first = chat.chat_batch([asked], greedy)[0].text.strip() == wanted
        s = stats.setdefault(kind(asked[-1].text), [0, 0, 0, 0])
        s[0], s[1], s[2], s[3] = s[0] + 1, s[1] + first, s[2] + hits / args.k, s[3] + (hits > 0)
    print(json.dumps({k: {"questions": n, "greedy": round(g / n, 3), "sampled": round(m / n, 3),
                          f"pass@{args.k}": round(p / n, 3)} for k, (n, g, m, p) in stats.items()}))


if __name__ == "__main__":
    main()
