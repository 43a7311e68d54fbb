"""The intent agent: corpus precision/recall, and the LLM extractor's validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.intent import IntentAgent, extract_with_llm

DATA = Path(__file__).parent / "data"


def score(name: str) -> tuple[float, float, int]:
    rows = [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    agent = IntentAgent()
    tp = fp = fn = 0
    for row in rows:
        proposal = agent.propose(row["message"], row["previous_answer"])
        right = (proposal is not None and row["correction"]
                 and proposal.subject.lower() == row["subject"].lower()
                 and proposal.target_new.lower() == row["target"].lower())
        if right:
            tp += 1
            continue
        fp += proposal is not None
        fn += row["correction"]
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), len(rows)


@pytest.mark.parametrize("corpus", ["intent_corpus.jsonl", "intent_heldout.jsonl"])
def test_parser_precision_and_recall(corpus):
    precision, recall, n = score(corpus)
    print(f"{corpus}: n={n} precision={precision:.3f} recall={recall:.3f}")
    assert n >= 60
    assert precision >= 0.95 and recall >= 0.8


def test_corpus_is_balanced_and_bilingual():
    rows = [json.loads(line) for line in (DATA / "intent_corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 80
    corrections = sum(r["correction"] for r in rows)
    assert 0.4 <= corrections / len(rows) <= 0.6
    assert any("\u4e00" <= ch <= "\u9fff" for r in rows for ch in r["message"])


def test_proposal_uses_previous_answer():
    agent = IntentAgent()
    p = agent.propose("No, it's Rome.", "The Eiffel Tower is located in Paris, France.", "Where is the Eiffel Tower?")
    assert (p.subject, p.prompt, p.target_new, p.target_old) == (
        "Eiffel Tower", "The Eiffel Tower is located in", "Rome", "Paris")
    assert p.question == "Where is the Eiffel Tower?" and p.extractor == "parser"
    zh = agent.propose("不对，爱因斯坦的专业是医学", "爱因斯坦的专业是物理。")
    assert (zh.subject, zh.prompt, zh.target_new, zh.language) == ("爱因斯坦", "爱因斯坦的专业是", "医学", "zh")


def test_llm_extractor_validates_and_retries():
    replies = iter(['not json at all', '"correction": true, "subject": "Eiffel Tower", '
                    '"prompt": "The Eiffel Tower is in", "new": "Rome", "old": "Paris"}'])
    p = extract_with_llm(lambda prompt: next(replies), "Actually it's in Rome", "The Eiffel Tower is in Paris.")
    assert p is not None and p.extractor == "llm" and p.target_new == "Rome"
    # a subject missing from the prompt is rejected; the parser then gets its turn
    bad = '{"correction": true, "subject": "Louvre", "prompt": "The Eiffel Tower is in", "new": "Rome"}'
    assert extract_with_llm(lambda prompt: bad, "x", None) is None
    agent = IntentAgent(generate=lambda prompt: bad)
    assert agent.propose("Actually, the Eiffel Tower is in Rome.").extractor == "parser"
    assert extract_with_llm(lambda prompt: '{"correction": false}', "thanks", None) is None


# -- no input crashes the parser, and none costs more than linear time ------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agents.intent_parser import MAX_CORRECTION_CHARS, parse_correction, parse_unbounded  # noqa: E402

# words the patterns look for, so that generated messages reach deep into the parser
WORDS = ["Actually,", "no", "not", "is", "is not", "isn't", "instead of", "it's", "the", "of", "'s", "was born in",
         "不对，", "不是", "是", "而不是", "应该是", "的", ",", ".", ";", "!", "\n", " ", "\x00", "🙂", "שלום", "{x}"]
MESSAGES = st.one_of(st.text(max_size=300), st.lists(st.sampled_from(WORDS) | st.text(max_size=5), max_size=60).map(" ".join))


@settings(max_examples=400, deadline=None)
@given(message=MESSAGES, previous=st.one_of(st.none(), MESSAGES))
def test_no_message_crashes_the_parser(message, previous):
    fact = parse_correction(message, previous)
    if fact is not None:
        assert fact.subject and fact.target_new and fact.subject in fact.prompt
    assert IntentAgent().propose(message, previous) is None or fact is not None


def test_a_message_longer_than_a_correction_is_not_read():
    correction = "Actually, the Eiffel Tower is in Rome."
    assert parse_correction(correction) is not None
    padded = correction + " " * MAX_CORRECTION_CHARS
    assert parse_correction(padded) is None and parse_unbounded(padded) is not None


def test_adversarial_messages_parse():
    """The inputs that made the old end-anchored patterns quadratic (12 s at 32 KB) still parse,
    to the same verdict at every length (their timing is ``bench/parser_speed.py``'s)."""
    from bench.parser_speed import FAMILIES

    for name, make in FAMILIES.items():
        verdicts = {parse_unbounded(make(n)) is None for n in (4096, 65536)}
        assert len(verdicts) == 1, name


@pytest.mark.parametrize("message, prompt, target", [
    ("No, that's wrong. The Eiffel Tower is located in the city of Rome.",
     "The Eiffel Tower is located in the city of", "Rome"),
    ("No, the iPhone is made by the company Samsung.", "The iPhone is made by the company", "Samsung"),
    ("Actually, Einstein studied at the University of Zurich.", "Einstein studied at the", "University of Zurich"),
    ("Actually, Shakespeare wrote The Merchant of Venice.", "Shakespeare wrote", "The Merchant of Venice"),
])
def test_the_card_proposes_the_fact_not_the_phrase(message, prompt, target):
    """The answer is the shortest text naming the fact ("city of Rome" -> "Rome", the category
    word joins the prompt); a name that holds "of" stays whole."""
    p = parse_correction(message)
    assert (p.prompt, p.target_new) == (prompt, target)
