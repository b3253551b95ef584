"""Inference layer: sampling settings, the generation engine, message -> turn mapping, and loading a
model to talk to from a run, a merged folder or a base plus adapter."""
