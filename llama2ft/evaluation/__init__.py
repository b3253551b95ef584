"""Evaluation layer: question sets, Chinese-answer metrics, reports and charts, loss on dialogues,
held-out exact match, and the runner of llama2ft-eval."""
