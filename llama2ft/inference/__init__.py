"""Inference layer: the model choice and the sampling settings every generation app shares, one request
and its reply, the generation engine (continuous batching, vLLM), message -> turn mapping, and loading a
model to talk to from a run, a merged folder or a base plus adapter."""
