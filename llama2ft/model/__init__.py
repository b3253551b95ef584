"""Model layer: one loader of tokenizers and models for training and inference, quantization, LoRA,
attention for packed rows, embedding resize, the embedded tiny model, and the folders runs leave."""
