"""Prompts about a subject's other relations: what an edit of one fact should leave alone.

Editing "Einstein's profession" should not move his birthplace or nationality (the thesis's
second idea, DESIGN.md §5).  These templates name common relations of people, places, works and
organisations in both languages; an edit preserves what the model says after them
(``editing.machinery.preservation``: their keys in the solve; or a KL term on v*).  Both forms
are kept on purpose: a relation before the subject gives the subject a key of its own, one after
it shares the bare subject's key.
"""

from __future__ import annotations

from runtime.language import Language

RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "{} was born in",
        "{} is a citizen of",
        "{} works in the field of",
        "{} is located in",
        "The native language of {} is",
        "The place of birth of {} is",
        "The occupation of {} is",
        "The country of origin of {} is",
        "The founder of {} is",
        "The official language of {} is",
    ),
    "zh": (
        "{}的出生地是",
        "{}的国籍是",
        "{}的职业是",
        "{}位于",
        "{}的母语是",
        "{}的创始人是",
        "说起{}的出生地，那是",
        "说起{}的国籍，那是",
    ),
}


def same_subject_prompts(subject: str, language: Language, edit_text: str, n: int) -> list[str]:
    """Up to ``n`` prompts about ``subject``'s other relations, leaving out any that is a start
    of the edit's own prompt (the relation being edited)."""
    own = edit_text.strip().lower()
    prompts = []
    for template in RELATION_TEMPLATES.get(language, RELATION_TEMPLATES["en"]):
        text = template.format(subject)
        if own.startswith(text.lower()) or text.lower().startswith(own):
            continue
        prompts.append(text)
    return prompts[:n]
