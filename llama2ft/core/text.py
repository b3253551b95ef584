"""Chinese characters: the one definition of the CJK ideograph ranges that data checks, vocabulary
extension and evaluation metrics share."""
from __future__ import annotations

import re

# CJK unified ideographs, extension A, compatibility ideographs, and extensions B-G (planes 2-3).
CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))
# The ranges as the inside of a regex character class, e.g. f"[{CJK_CLASS}]+"
CJK_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in CJK_RANGES)
CJK_CHAR = re.compile(f"[{CJK_CLASS}]")
CJK_RUN = re.compile(f"[{CJK_CLASS}]+")


def is_cjk(ch: str) -> bool:
    """A CJK unified (or compatibility) ideograph: a Chinese character."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in CJK_RANGES)
