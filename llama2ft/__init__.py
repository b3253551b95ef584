"""llama2ft: config-driven LoRA/QLoRA fine-tuning of Llama-2 into Chinese chat models."""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

# The project root holds configs/ and the embedded default data/; configs refer to it as
# ${oc.env:LLAMA2FT_ROOT} so no path in them depends on the current directory.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LLAMA2FT_ROOT", str(PROJECT_ROOT))
CONFIG_DIR = PROJECT_ROOT / "configs"
