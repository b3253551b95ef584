"""Training layer: the fine-tuning recipe, trainer arguments, distributed helpers, loss plot and sweep
summaries."""
