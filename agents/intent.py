"""Intent agent: does a message correct a fact, and if so, which edit would it be?

Two extractors, the first valid result wins: an LLM extractor (few-shot prompts in
``prompts/intent_{en,zh}.txt``, strict JSON validated by pydantic, one retry) for models
that can do it, then the deterministic parser.  The agent only ever returns a proposal;
it cannot apply one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

from pydantic import ValidationError

import prompts
from agents.intent_parser import parse_correction
from agents.proposal import EditProposal
from runtime.language import language_of

log = logging.getLogger(__name__)

GenerateFn = Callable[[str], str]  # prompt text -> model continuation
_JSON = re.compile(r"\{.*?\}", re.DOTALL)
def extract_with_llm(generate: GenerateFn, message: str, previous_answer: str | None,
                     question: str | None = None, retries: int = 1) -> EditProposal | None:
    """Ask the model for JSON; None when it says "no correction" or fails validation twice."""
    lang = language_of(message)
    prompt = prompts.render(f"intent_{lang}", answer=previous_answer or "", message=message)
    for attempt in range(retries + 1):
        text = generate(prompt if attempt == 0 else prompt + " {")
        if attempt:
            text = "{" + text
        match = _JSON.search(text)
        if not match:
            continue
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not data.get("correction"):
            return None
        try:
            return EditProposal(
                subject=str(data.get("subject", "")),
                prompt=str(data.get("prompt", "")),
                target_new=str(data.get("new", "")),
                target_old=(str(data["old"]) if data.get("old") else None),
                question=question,
                extractor="llm",
            )
        except ValidationError as exc:
            log.info("LLM proposal rejected (attempt %d): %s", attempt + 1, exc.errors()[0]["msg"])
    return None


def extract_with_parser(message: str, previous_answer: str | None, question: str | None = None) -> EditProposal | None:
    return parse_correction(message, previous_answer, question)


class IntentAgent:
    """``generate`` enables the LLM extractor (capable models only); the parser always runs."""

    def __init__(self, generate: GenerateFn | None = None) -> None:
        self.generate = generate

    def propose(self, message: str, previous_answer: str | None = None,
                previous_question: str | None = None) -> EditProposal | None:
        """The edit ``message`` asks for, or None.  ``previous_question`` (the person's message
        before it) becomes the proposal's question — the chat form the edit is optimised and
        logged with — only when it asks about the subject: it is the question the correction
        answered; anything else the person said stays out of the edit and its log row."""
        if not message or not message.strip():
            return None
        proposal = None
        if self.generate is not None:
            proposal = extract_with_llm(self.generate, message, previous_answer, previous_question)
        if proposal is None:
            proposal = extract_with_parser(message, previous_answer, previous_question)
        if proposal is not None and proposal.question and not asks_about(proposal.question, proposal.subject):
            proposal = proposal.model_copy(update={"question": None})
        return proposal


def asks_about(question: str, subject: str) -> bool:
    return subject.casefold() in question.casefold()
