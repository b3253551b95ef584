"""Publishing layer: streaming safetensors, the LoRA merge and its verification, the model card and
the GGUF export."""
