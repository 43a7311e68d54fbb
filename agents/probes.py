"""What the edit card shows before and after an edit: the model's answers, measured in parts.

The scores (P(new answer), P(old answer), whether the new answer is the model's own top
choice on the prompt) take one forward pass; the rest — the prompt's greedy completion, the
chat answer to the question, three unrelated completions — take several seconds of
generation.  So the card gets the scores the moment the weights are in, and the rest is
streamed into it afterwards (``Prober.rest``), outside the edit mutex and the write lock.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from agents.chat import ChatAgent
from agents.fluency import FluencyCheck
from agents.locks import RWLock
from editing.machinery.probe import greedy_completion, target_logprobs
from editing.request import EditRequest
from runtime.conversation import GenerationSettings
from runtime.loader import LoadedModel

UNRELATED_PROBES = {
    "en": ["The capital of Japan is", "The author of Hamlet is", "Water is made of hydrogen and"],
    "zh": ["日本的首都是", "《哈姆雷特》的作者是", "水是由氢和"],
}
CHAT_TOKENS = 48  # the card's chat answer: long enough to name the fact, short enough to wait for


class Probe(BaseModel):
    target_prob: float
    old_prob: float | None = None
    # every token of the new answer is the model's top choice after the prompt (teacher forced):
    # what a greedy completion needs to say it
    predicted: bool = False
    completion: str | None = None  # None: not measured (yet)
    chat_answer: str | None = None
    unrelated: dict[str, str] = {}
    complete: bool = False  # every part measured
    note: str | None = None  # why a part is missing
    fluency: FluencyCheck | None = None  # after an edit, once complete: do its answers still read?


class Prober:
    def __init__(self, loaded: LoadedModel, lock: RWLock, chat: ChatAgent) -> None:
        self.loaded, self.lock, self.chat = loaded, lock, chat

    def scores(self, request: EditRequest, target_old: str | None) -> Probe:
        """The fast part: one teacher-forced pass over the new (and old) answer."""
        targets = [request.target_new] + ([target_old] if target_old else [])
        with self.lock.read():
            scores = target_logprobs(self.loaded.model, self.loaded.tokenizer, [request.text] * len(targets), targets)
        return Probe(target_prob=scores[0].prob, old_prob=scores[1].prob if target_old else None,
                     predicted=all(scores[0].hits))

    def rest(self, request: EditRequest, probe: Probe) -> Iterator[Probe]:
        """The slow parts, one at a time: the probe with each new part filled in."""
        model, tok = self.loaded.model, self.loaded.tokenizer
        with self.lock.read():
            probe = probe.model_copy(update={"completion": greedy_completion(model, tok, request.text, 8).strip()})
        yield probe
        question = request.question or request.text
        probe = probe.model_copy(update={"chat_answer": self.chat.answer([], question,
                                                                         GenerationSettings(max_new_tokens=CHAT_TOKENS))})
        yield probe
        with self.lock.read():
            unrelated = {p: greedy_completion(model, tok, p, 5).strip() for p in UNRELATED_PROBES[request.language]}
        yield probe.model_copy(update={"unrelated": unrelated, "complete": True})

    def full(self, request: EditRequest, target_old: str | None) -> Probe:
        *_, probe = self.rest(request, self.scores(request, target_old))
        return probe
