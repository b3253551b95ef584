"""Shared ground of every layer: user-facing errors, atomic file output, path and text helpers.
Imports nothing else of llama2ft."""
