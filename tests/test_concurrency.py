"""One model, many requests at once: hooks never cross from one computation into another.

Greedy chat answers generated *while* an edit, a statistics pass, a trace or a logit lens
runs on the same model must be byte-identical to the answers with nothing else running, and
what those computations return must be identical to what they return alone (smollm2).
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

from agents.chat import ChatAgent, GenerationSettings
from editing.inspection.lens import logit_lens
from editing.inspection.tracing import causal_trace
from editing.machinery.covariance import collect_key_moment
from editing.request import EditRequest

QUESTIONS = ["What is the capital of Japan?", "Who wrote Hamlet?", "Where is the Eiffel Tower?"]
SETTINGS = GenerationSettings(max_new_tokens=16)
REQUEST = EditRequest(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome",
                      question="Where is the Eiffel Tower?")
TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank."] * 40


@pytest.fixture(scope="module")
def chat(smollm2):
    return ChatAgent(smollm2)


@pytest.fixture(scope="module")
def alone(chat):
    return {q: chat.answer([], q, SETTINGS) for q in QUESTIONS}


class ChatLoad:
    """Sessions asking the questions over and over in their own threads until stopped."""

    def __init__(self, chat: ChatAgent, sessions: int = 2) -> None:
        self.chat, self.answers, self.errors = chat, [], []
        self.running = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(sessions)]

    def _loop(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            q = QUESTIONS[i % len(QUESTIONS)]
            i += 1
            try:
                self.running.set()
                start = time.perf_counter()
                self.answers.append((q, self.chat.answer([], q, SETTINGS), start, time.perf_counter()))
            except Exception as exc:  # noqa: BLE001 - collected, asserted on below
                self.errors.append(exc)

    def __enter__(self) -> ChatLoad:
        for t in self._threads:
            t.start()
        self.running.wait()
        time.sleep(0.2)  # the generations are under way
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.ended = time.perf_counter()
        self._stop.set()
        for t in self._threads:
            t.join()

    def overlapping(self) -> int:
        """Answers whose generation ran while the computation did."""
        ended = getattr(self, "ended", time.perf_counter())
        return sum(1 for *_, start, end in self.answers if start < ended and end > self.started)


def check(load: ChatLoad, alone: dict[str, str]) -> None:
    assert not load.errors, load.errors[:3]
    assert load.overlapping() >= 2, "the chats did not run beside the computation"
    wrong = [(q, a) for q, a, *_ in load.answers if a != alone[q]]
    assert not wrong, f"answers changed while the computation ran: {wrong[:3]}"


def test_edits_and_chat_leave_each_other_alone(smol_editor, chat, alone, caplog):
    caplog.set_level(logging.WARNING)
    for method in ("rome", "ft"):
        smol_editor.invalidate()  # no prefix keys/values carried from the run before
        reference = smol_editor.compute(REQUEST, method).delta
        smol_editor.invalidate()
        with ChatLoad(chat) as load:
            beside = smol_editor.compute(REQUEST, method).delta
        check(load, alone)
        assert reference.tensors.keys() == beside.tensors.keys()
        for name in reference.tensors:
            assert torch.equal(reference.tensors[name], beside.tensors[name]), f"{method} delta changed by chat"
    assert smol_editor.checks.suffix.get(True) and smol_editor.checks.replay.get(True), "a fast path was switched off"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_statistics_trace_and_lens_beside_chat(smollm2, chat, alone, caplog):
    caplog.set_level(logging.WARNING)
    model, tok = smollm2.model, smollm2.tokenizer
    from editing.spec import spec_for

    spec = spec_for(model)

    def statistics():
        return collect_key_moment(model, tok, spec, 4, iter(TEXTS), 600)[0]

    def trace():
        result = causal_trace(model, tok, REQUEST.prompt, REQUEST.subject, kinds=("mlp",), samples=1)
        return torch.tensor(result.scores["mlp"])

    def lens():
        return torch.tensor(logit_lens(model, tok, REQUEST.prompt, "Paris").target_prob)

    for compute in (statistics, trace, lens):
        reference = compute()
        with ChatLoad(chat) as load:
            beside = compute()
            if compute is lens:  # a lens is a single pass: repeat it so that chats overlap it
                while load.overlapping() < 2:
                    assert torch.equal(compute(), reference)
        check(load, alone)
        assert torch.equal(reference, beside), f"{compute.__name__} changed by chat"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
