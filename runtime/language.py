"""Which language a text is in, decided in one place for the whole product.

A text is Chinese ("zh") when it holds a Han character, otherwise English ("en"): the
proposal, the edit request (which picks the context prefixes, the essence prompt and the
probes), the chat's system prompt and the report's headline all ask ``language_of``.
``is_cjk`` is the wider test the join rule of prompt and target needs: CJK punctuation and
full-width forms take no space before or after them either.
"""

from __future__ import annotations

import re
from typing import Literal

Language = Literal["en", "zh"]

HAN_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # a regex class body: Han ideographs
_HAN = re.compile(f"[{HAN_CHARS}]")
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]")


def language_of(text: str) -> Language:
    return "zh" if _HAN.search(text) else "en"


def is_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK character, punctuation or full-width form included."""
    return bool(_CJK.search(text))
