"""Serving layer: the terminal chat, the Gradio web app and the OpenAI-compatible API on top of the
inference engine."""
