"""The agents' prompt texts, loaded by name: ``prompts.load("system_en")``.

Texts live in ``prompts/<name>.txt``; ``render`` fills ``{placeholders}`` with str.format.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_DIR = Path(__file__).parent


class PromptNotFound(KeyError):
    pass


@cache
def load(name: str) -> str:
    path = _DIR / f"{name}.txt"
    if not path.exists():
        raise PromptNotFound(f"no prompt named {name!r} (looked for {path})")
    return path.read_text(encoding="utf-8").rstrip("\n")


def render(name: str, **values: str) -> str:
    return load(name).format(**values)


def names() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.txt"))
