"""A deterministic parser for the common ways people correct a fact, in English and Chinese.

It needs a correction cue ("actually", "no,", "should be", "不对", "应该是", "记住", ...):
a plain statement, a question or a bare "that's wrong" yields nothing.  When the message
names no subject ("No, it's Rome"), the previous assistant answer supplies the subject,
the relation and the old value.

Every message costs time linear in its length, and little: a correction is a sentence, so only
the first ``MAX_CORRECTION_CHARS`` characters' worth of message is read (a longer one is not a
correction); whitespace runs, newlines included, become single spaces first, so no ``.+$``
can fail on a line break and retry from every position; and the tail clauses ("…, not W",
"…而不是W") are found by one scan of the last clause instead of an end-anchored search that
re-scans the rest of the text from every start (that search took 12 s on a 32 KB message:
``bench/parser_speed.py``).  The patterns left are anchored, or searched for a fixed word,
so none of them backtracks over more than a word.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pydantic import ValidationError

from agents.proposal import EditProposal
from runtime.language import language_of

# -- English -------------------------------------------------------------------------------

_EN_LEAD = re.compile(
    r"^\s*(?:(?:no|nope|wrong|incorrect|not quite|not really|actually|in fact|well|sorry|"
    r"that'?s (?:wrong|incorrect|not right|not true|not correct)|that is (?:wrong|incorrect|not right|not true)|"
    r"you(?:'re| are) (?:wrong|mistaken)|i'?m afraid (?:that'?s|that is) wrong|this is wrong|correction|fyi|remember(?: that)?|note(?: that)?|please remember(?: that)?|"
    r"just so you know|for the record)\b[\s,:.!;—-]*)+",
    re.IGNORECASE,
)
_EN_CUE = re.compile(
    r"\b(actually|no|nope|wrong|mistaken|incorrect|not quite|in fact|correction|remember|should be|isn'?t|is not|not)\b",
    re.IGNORECASE,
)
_EN_QUESTION = re.compile(
    r"^\s*(what|who|whom|whose|where|when|which|why|how|is|are|was|were|do|does|did|can|could|would|will|"
    r"should|tell me|explain|describe)\b",
    re.IGNORECASE,
)
# verbs after which the value follows; the longest alternatives first
_EN_RELATION = re.compile(
    r"\s(?P<rel>should be|(?:is|was|are|were) (?!not\b)\w+(?:ed|en|wn|ng|lt|ht) (?:by|in|at|on|from|for|as)|is located in|is situated in|is based in|is headquartered in|was born in|"
    r"was founded in|was founded by|was written by|was invented by|was created by|was developed by|is made of|"
    r"is made by|is owned by|is in|is at|is on|is from|lives in|died in|works for|works as|works at|studied at|studies at|"
    r"graduated from|plays for|"
    r"plays the|plays|speaks|wrote|invented|founded|married|leads|owns|belongs to|was in|was a|was an|was the|"
    r"is a|is an|is the|was|is|are|were|has been|'s)\s(?P<obj>.+)$",
    re.IGNORECASE,
)
# "…, not W" / "… instead of W" at the end: searched for in the last clause only (``_tail_clause``)
_EN_NOT_TAIL = re.compile(r",? ?(?:and )?\bnot (?P<old>.+)$|,? ?\binstead of (?P<old2>.+)$", re.IGNORECASE)
_EN_CLAUSE_END = ",.;!"
# "X is not W, it's Z": the negation, searched for in one clause (``_negated_then_corrected``)
_EN_NEGATION = re.compile(r" (?:is not|isn't|was not|wasn't) (?P<old>.+)$", re.IGNORECASE)
_EN_CORRECTED = re.compile(r" ?(?:it'?s|it is|but|it was) (?P<new>.+)$", re.IGNORECASE)
_PRONOUN_SUBJECT = re.compile(r"^(it|that|this|he|she|they|the answer)$", re.IGNORECASE)
_ARTICLE = re.compile(r"^(the|a|an)\s+", re.IGNORECASE)
_OF = re.compile(r"^(?P<head>(?:the\s+)?[\w\s-]+?)\s+(?:of|on)\s+(?P<subject>.+)$", re.IGNORECASE)
_PRONOUN_VALUE = re.compile(r"^(?:it'?s|it is|it was|that'?s|that is|the (?:right |correct )?answer is|it should be)\s+(?P<value>.+)$",
                            re.IGNORECASE)
# "city of Rome", "Italian city of Naples", "company Samsung": a category noun (lowercase, from a
# closed list; "University of Zurich" or "The Merchant of Venice" are names and stay whole) before the name
_CATEGORY_NOUNS = ("city|town|village|country|nation|state|province|region|county|district|island|continent|"
                   "capital|language|company|firm|band|club|team|river|mountain|university|field|genre|sport|"
                   "religion|profession|job|party|newspaper|network|label|brand|planet")
_CATEGORY = re.compile(rf"^(?P<words>(?:[A-Za-z]+ )?(?:{_CATEGORY_NOUNS})(?: of)?) (?P<name>(?:the )?[A-Z0-9].*)$")
_POSSESSIVE = re.compile(r"^(?P<subject>.+?)'s\s+(?P<relation>.+)$")

# -- Chinese -------------------------------------------------------------------------------

_ZH_LEAD = re.compile(r"^\s*(?:(?:不对|不是的|错了|错|你错了|你说错了|这是错的|这不对|其实|实际上|事实上|更正一下|更正|纠正一下|纠正|"
                      r"记住|请记住|要记住|注意|补充|告诉你)[\s，,：:。！!、]*)+")
_ZH_CUE = re.compile(r"(不对|不是|错|应该|记住|更正|纠正|其实|实际上|事实上|而非|而不是)")
_ZH_QUESTION = re.compile(r"(吗|呢|什么|谁|哪|几|多少|怎么|为何|为什么|如何)[？?]?\s*$|[？?]\s*$")
_ZH_RELATION = re.compile(r"^(?P<left>.+?)(?P<rel>应该是|应当是|其实是|实际上是|位于|出生于|出生在|生于|来自|属于|成立于|毕业于|是)(?P<obj>.+)$")
_ZH_NOT_TAIL = re.compile(r"[，,]? ?(?:而不是|不是|而非)(?P<old>.+)$")  # in the last clause only
_ZH_CLAUSE_END = "，,。！!"

_TRAIL = " \t\n.。!！;；,，\"'“”‘’"
MAX_CORRECTION_CHARS = 400  # the longest correction in the intent corpora has 68


def _tail_clause(text: str, pattern: re.Pattern, clause_end: str, closing: str) -> re.Match | None:
    """``pattern`` searched in the last clause of ``text`` (after its last ``clause_end``
    character), once trailing ``closing`` punctuation is set aside: one backward scan and one
    search of that clause, however long the text."""
    end = len(text.rstrip(closing))
    start = end
    while start > 0 and text[start - 1] not in clause_end:
        start -= 1
    if start > 0 and text[start - 1] in ",，":  # the pattern may begin at the comma itself
        start -= 1
    return pattern.search(text, start, end)


class _Statement(NamedTuple):
    """What the parser read, before it is checked: the proposal is made from it (``parse_correction``)."""

    subject: str
    prompt: str
    target_new: str
    target_old: str | None


def _clean(value: str) -> str:
    return value.strip(_TRAIL)


# -- English parsing ---------------------------------------------------------------------------

def _en_statement(sentence: str) -> tuple[str, str, str] | None:
    """'The Eiffel Tower is located in Rome' -> (subject, prompt, value)."""
    sentence = _clean(sentence)
    m = _EN_RELATION.search(sentence)
    if not m:
        return None
    left = sentence[: m.start()].strip()
    rel = m.group("rel")
    value = _clean(m.group("obj"))
    if not left or not value:
        return None
    if rel.lower() == "should be":
        rel = "is"
    if rel == "'s":
        rel = "is"
    # "the capital of France" -> subject France, prompt "The capital of France is"
    subject_phrase = left
    of = _OF.match(left)
    possessive = _POSSESSIVE.match(left)
    if possessive:
        subject = _ARTICLE.sub("", possessive.group("subject")).strip()
    elif of and not _PRONOUN_SUBJECT.match(of.group("subject")):
        subject = _ARTICLE.sub("", of.group("subject")).strip()
    else:
        subject = _ARTICLE.sub("", subject_phrase).strip()
    if not subject or len(subject.split()) > 8:
        return None
    # articles/prepositions that start the value belong to the prompt ("is a | doctor"), and so
    # does a category word before the name ("in the city of | Rome", "made by the company |
    # Samsung"): the edit's answer is the shortest text that names the fact
    prompt_tail = ""
    for _ in range(2):
        # lowercase only: a capital "The" mid-sentence starts a name ("The Hague", "The Merchant of Venice")
        lead = re.match(r"^((?:a|an|the|in|at|on|from|by)\s+)+", value)
        if lead and len(value) > len(lead.group(0)):
            prompt_tail += " " + lead.group(0).strip()
            value = value[len(lead.group(0)) :]
        category = _CATEGORY.match(value)
        if not category:
            break
        prompt_tail += " " + category.group("words")
        value = category.group("name")
    # a sentence starts with a capital, unless that would change the subject ("iPhone", "nOT")
    head = left if left.startswith(subject) else f"{left[0].upper()}{left[1:]}"
    prompt = f"{head} {rel}{prompt_tail}"
    return subject, prompt, value


def _strip_preposition(value: str) -> str:
    return re.sub(r"^(?:in|at|on|from|by|a|an|the)\s+", "", value, flags=re.IGNORECASE)


def _en_old_value(sentence: str) -> tuple[str, str | None]:
    m = _tail_clause(sentence, _EN_NOT_TAIL, _EN_CLAUSE_END, " .!")
    if m:
        return sentence[: m.start()], _clean(m.group("old") or m.group("old2"))
    return sentence, None


def _negated_then_corrected(body: str) -> tuple[str, str, str] | None:
    """"X is not W, it's Z" -> (X, W, Z), W without a clause break: the first clause that holds a
    negation and whose end is followed by "it's …" / "but …".  Each clause is searched once."""
    start = 0
    for i, ch in enumerate(body):
        if ch not in ",.;":
            continue
        corrected = _EN_CORRECTED.match(body, i + 1)
        if corrected:
            negation = _EN_NEGATION.search(body, start, i)
            if negation and negation.start() > 0:
                return body[: negation.start()], negation.group("old"), corrected.group("new")
        start = i + 1
    return None


_EN_HEDGE = re.compile(r"\b(maybe|perhaps|i think|i guess|i believe|not sure|i'?m not sure|can'?t remember|might be|probably|"
                      r"never mind|nevermind)\b", re.IGNORECASE)
_ZH_HEDGE = re.compile(r"(也许|可能|大概|好像|记不清|不确定|不记得|算了)")
_EN_CLAUSE_TAIL = re.compile(r",\s*(?:i|you|we|right|isn'?t it|ok|okay|but|and|so|please)\b.*$", re.IGNORECASE)


def parse_english(message: str, previous_answer: str | None) -> _Statement | None:
    text = " ".join(message.split())
    if _EN_HEDGE.search(text):
        return None
    if text.endswith("?") or (_EN_QUESTION.match(text) and not _EN_CUE.search(text.split(",")[0])):
        return None
    if not _EN_CUE.search(text) and "should be" not in text.lower():
        return None
    body = _EN_LEAD.sub("", text).strip()
    # "X is not W, it's Z" / "It's not W, it's Z"
    negated = _negated_then_corrected(body)
    if negated:
        left, old, new = negated
        new, old = _clean(new), _strip_preposition(_clean(old))
        if _PRONOUN_SUBJECT.match(left.strip()):
            return _from_previous(previous_answer, new, old)
        statement = _en_statement(f"{left} is {new}")
        if statement:
            return _Statement(*statement, old)
    # "Not W, it's Z"
    m = re.match(r"^not\s+(?P<old>[^,]+),\s*(?:it'?s|it is|it was|but)\s+(?P<new>.+)$", body, re.IGNORECASE)
    if m:
        return _from_previous(previous_answer, _clean(m.group("new")), _strip_preposition(_clean(m.group("old"))))
    body = _EN_CLAUSE_TAIL.sub("", body)
    body, old = _en_old_value(body)
    body = _clean(body)
    if not body:
        return None
    pronoun = _PRONOUN_VALUE.match(body)
    if pronoun:
        return _from_previous(previous_answer, _clean(pronoun.group("value")), old)
    statement = _en_statement(body)
    if statement is None:
        return None
    subject, prompt, value = statement
    if _PRONOUN_SUBJECT.match(subject) or subject.lower() in {"answer", "correct answer", "right answer"}:
        return _from_previous(previous_answer, value, old) if previous_answer else None
    if value.lower() in {"wrong", "incorrect", "not right", "not true", "false"}:
        return None
    if old is None and previous_answer:
        old = _old_from_answer(previous_answer, subject)
    return _Statement(subject, prompt, value, old)


def _old_from_answer(answer: str, subject: str) -> str | None:
    statement = _first_statement(answer)
    if statement and statement.subject.lower() == subject.lower():
        return statement.target_new
    return None


def _first_statement(answer: str) -> _Statement | None:
    # the model's answer: its first sentence, whitespace collapsed, at most a correction's length
    sentence = re.split(r"(?<=[.!。！]) ?", " ".join(answer[: 4 * MAX_CORRECTION_CHARS].split()))[0]
    sentence = sentence[:MAX_CORRECTION_CHARS]
    if language_of(sentence) == "zh":
        found = _zh_statement(sentence)
        return _Statement(*found, None) if found else None
    sentence = re.split(r",", sentence)[0]
    found = _en_statement(sentence)
    return _Statement(*found, None) if found else None


def _from_previous(previous_answer: str | None, value: str, old: str | None) -> _Statement | None:
    """Subject and relation from the assistant's last answer; the new value from the user."""
    if not previous_answer:
        return None
    statement = _first_statement(previous_answer)
    if statement is None or not value:
        return None
    value = _clean(re.sub(r"^(?:it'?s|it is|that'?s|是)\s*", "", value, flags=re.IGNORECASE))
    return _Statement(statement.subject, statement.prompt, value, old or statement.target_new)


# -- Chinese parsing ---------------------------------------------------------------------------

def _zh_statement(sentence: str) -> tuple[str, str, str] | None:
    """'爱因斯坦的专业是医学' -> ('爱因斯坦', '爱因斯坦的专业是', '医学')."""
    sentence = _clean(sentence)
    m = _ZH_RELATION.match(sentence)
    if not m:
        return None
    left, value = _clean(m.group("left")), _clean(m.group("obj"))
    if not left or not value:
        return None
    subject = left.split("的")[0] if "的" in left else left
    subject = re.sub(r"^(那个|这个|该)", "", subject).strip()
    if not subject or len(subject) > 20:
        return None
    rel = m.group("rel")
    rel = "是" if rel.endswith("是") else rel  # "应该是" states the fact "是"
    return subject, left + rel, value


def parse_chinese(message: str, previous_answer: str | None) -> _Statement | None:
    text = " ".join(message.split())
    if _ZH_HEDGE.search(text):
        return None
    if _ZH_QUESTION.search(text):
        return None
    if not _ZH_CUE.search(text):
        return None
    body = _ZH_LEAD.sub("", text).strip()
    old = None
    m = _tail_clause(body, _ZH_NOT_TAIL, _ZH_CLAUSE_END, " 。！!")
    if m:
        old = _clean(m.group("old"))
        body = body[: m.start()]
    body = _clean(body)
    # "不是W，是Z" / "应该是Z": no subject of its own
    m = re.match(r"^(?:不是(?P<old>[^，,]+)[，,]\s*)?(?:而)?(?:应该|应当|其实)?是(?P<new>.+)$", body)
    if m:
        return _from_previous(previous_answer, _clean(m.group("new")), old or (m.group("old") and _clean(m.group("old"))))
    statement = _zh_statement(body)
    if statement is None:
        return None
    subject, prompt, value = statement
    if subject in {"它", "他", "她", "这", "那", "答案", "正确答案"}:
        return _from_previous(previous_answer, value, old)
    if old is None and previous_answer:
        old = _old_from_answer(previous_answer, subject)
    return _Statement(subject, prompt, value, old)


def parse_correction(message: str, previous_answer: str | None = None,
                     question: str | None = None) -> EditProposal | None:
    """The edit a correction asks for, or None if the message is not a correction (a message
    longer than ``MAX_CORRECTION_CHARS`` is none) or what it states is not an edit."""
    if not message or not message.strip() or len(message) > MAX_CORRECTION_CHARS:
        return None
    found = parse_unbounded(message, previous_answer)
    if found is None:
        return None
    try:
        return EditProposal(subject=found.subject, prompt=found.prompt, target_new=found.target_new,
                            target_old=found.target_old, question=question, extractor="parser")
    except ValidationError:
        return None


def parse_unbounded(message: str, previous_answer: str | None = None) -> _Statement | None:
    """``parse_correction`` without the length bound (its cost is linear in the length:
    ``bench/parser_speed.py`` times it on long adversarial messages)."""
    if not message or not message.strip():
        return None
    if language_of(message) == "zh":
        return parse_chinese(message, previous_answer)
    return parse_english(message, previous_answer)
