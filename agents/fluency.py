"""Whether the edited model still speaks: a check of the answers the edit card already measures.

An edit can land (the new answer is the top choice after the prompt) and still break the model:
a δ written too large makes the chat answer collapse into repeated or mixed-script tokens
("郑済鴻ա中 曾 崔永康 曾 榮根 曾職權 曾才 曾昌泰 曾職權 …"), or makes every prompt answer the new
fact ("The capital of Japan is Rome Rome"). The card's "after" column — the prompt's
completion, the chat answer, three unrelated completions — shows both, so the check reads
those texts and compares them with the "before" column (a model that already echoed the
question before the edit is not broken by it).  Four signals, each with a threshold measured on
the unedited built-in models' own answers (``bench/fluency_thresholds.py``: 240 texts, the chat
answers and completions of 30 English and 30 Chinese questions on each model):

  * repetition: the share of a text's character 6-grams that repeat an earlier one; broken
    above 0.5 where before it was not (unedited: median 0, one text of 240 above 0.5).
  * foreign script: letters in a script the question's language does not use (Latin and Han for
    Chinese, Latin for English); broken at any (unedited: none in 240 texts).
  * a garbled subject (English): the subject's name runs on into more letters ("Eiffel Towert").
  * bleeding: the new answer appears in at least two of the three unrelated completions that did
    not contain it before; or else an unrelated completion now opens with another word ("The
    capital of Japan is" Tokyo → "the capitalo"): ordinary edits leave these first words alone
    (``tests/test_lifelong_behaviour.py`` holds 20 accumulated edits to it).

The numbers, what each signal catches and misses, and why the card warns instead of reverting by
itself: docs/fluency.md.

It does not score the answer's likelihood under the unedited model: that needs a second copy of
the weights (or reverting and re-applying under the write lock, pausing every chat), for a signal
the four above already give on the failures seen (the gibberish of the issue, KN's "Rome Rome").
"""

from __future__ import annotations

import re
import unicodedata

from pydantic import BaseModel

REPETITION_LIMIT = 0.5
FOREIGN_SCRIPT_LIMIT = 0.0  # any letter in a foreign script: none in 240 unedited texts
BLEEDING_LIMIT = 2  # of the unrelated completions
ALLOWED_SCRIPTS = {"en": {"LATIN"}, "zh": {"LATIN", "CJK"}}


class FluencyCheck(BaseModel):
    """The verdict on one edit's "after" column; ``problems`` empty: the answers read as before."""

    problems: list[str] = []
    repetition: float = 0.0  # the worst of the completion and the chat answer
    foreign_script: float = 0.0
    bleeding: int = 0  # unrelated completions that now name the new answer

    @property
    def broken(self) -> bool:
        return bool(self.problems)


def repetition(text: str, n: int = 6) -> float:
    """Share of the character n-grams of ``text`` (spaces collapsed) that repeat an earlier one.

    Characters, not words: a collapse is often one word that never ends ("Toscapapapapap…"), and
    Chinese has no spaces. 0 for texts under 2n characters."""
    chars = " ".join(text.split())
    grams = [chars[i:i + n] for i in range(len(chars) - n + 1)]
    if len(chars) < 2 * n:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def garbled_subject(text: str, subject: str) -> bool:
    """The subject's name runs on into more letters ("Eiffel Towert", "Eiffel Towero.com"): an
    edit written too strongly at the subject's last token.  Not for Chinese (no word boundaries)."""
    return re.search(re.escape(subject) + r"(?=[^\W_])", text) is not None


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else ""


def foreign_script(text: str, language: str) -> float:
    """Share of the letters of ``text`` written in a script ``language`` does not use."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    allowed = ALLOWED_SCRIPTS.get(language, ALLOWED_SCRIPTS["en"])
    return sum(_script(ch) not in allowed for ch in letters) / len(letters)


def check(before, after, request) -> FluencyCheck:
    """Compare the "after" probe with the "before" one (both ``agents.probes.Probe``) of the
    edit ``request`` (an ``EditRequest``; its language picks the scripts and word rules)."""
    language, problems = request.language, []
    worst_repetition = worst_foreign = 0.0
    for name, label in (("completion", "the completion"), ("chat_answer", "the chat answer")):
        b, a = getattr(before, name) or "", getattr(after, name) or ""
        rep_b, rep_a = repetition(b), repetition(a)
        foreign_b, foreign_a = foreign_script(b, language), foreign_script(a, language)
        worst_repetition, worst_foreign = max(worst_repetition, rep_a), max(worst_foreign, foreign_a)
        if rep_a > REPETITION_LIMIT >= rep_b:
            problems.append(f"{label} repeats itself ({rep_a:.0%} of it)")
        if foreign_a > FOREIGN_SCRIPT_LIMIT >= foreign_b:
            problems.append(f"{label} mixes scripts ({foreign_a:.0%} of its letters)")
        if language == "en" and garbled_subject(a, request.subject) and not garbled_subject(b, request.subject):
            problems.append(f"{label} garbles the subject's name (“{_around(a, request.subject)}”)")
    target = request.target_new.strip()
    bleeding = sum(1 for prompt, text in after.unrelated.items()
                   if _names(text, target, language) and not _names(before.unrelated.get(prompt, ""), target, language))
    if bleeding >= BLEEDING_LIMIT:
        problems.append(f"{bleeding} of {len(after.unrelated)} unrelated prompts now answer “{target}”")
    else:
        for prompt, text in after.unrelated.items():
            old = before.unrelated.get(prompt)
            if old is not None and _opening(old, language) != _opening(text, language):
                problems.append(f"an unrelated answer changed (“{prompt}” {old.strip()!r} → {text.strip()!r})")
    return FluencyCheck(problems=problems, repetition=round(worst_repetition, 3), foreign_script=round(worst_foreign, 3),
                        bleeding=bleeding)


def _names(text: str, target: str, language: str) -> bool:
    """``text`` names ``target``: as a whole word in English ("US" is not in "because")."""
    if language == "zh":
        return target in text
    return re.search(rf"(?<!\w){re.escape(target)}(?!\w)", text, re.IGNORECASE) is not None


def _opening(text: str, language: str) -> str:
    """What an unrelated completion answers: its first word (first two characters in Chinese)."""
    text = text.strip().lower()
    return text[:2] if language == "zh" else (re.findall(r"\w+", text) or [""])[0]


def _around(text: str, subject: str) -> str:
    match = re.search(re.escape(subject) + r"\w*", text)
    return match.group(0) if match else subject
