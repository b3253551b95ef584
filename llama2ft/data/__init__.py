"""Data layer: csv reading, dialogue parsing, prompt templates, token ids and labels, packing, collators,
the preprocessing cache, the data pipeline of training, and Chinese vocabulary extension."""
