"""The fluency guard: an edit that breaks the model's answers is never reported as a plain success."""

from __future__ import annotations

import pytest
from conftest import EIFFEL

from agents import fluency
from agents.probes import Probe
from editing.request import EditRequest

EIFFEL_REQUEST = EditRequest(**EIFFEL)
HIT = EditRequest(prompt="哈尔滨工业大学的现任校长是", subject="哈尔滨工业大学", target_new="韩杰才",
                  question="哈尔滨工业大学的现任校长是谁？")


def probe(completion: str, chat: str, unrelated: dict[str, str] | None = None) -> Probe:
    return Probe(target_prob=0.5, completion=completion, chat_answer=chat, unrelated=unrelated or {}, complete=True)


def test_the_gibberish_of_the_issue_is_caught_and_an_ordinary_answer_is_not():
    before = probe("韩杰才", "哈尔滨工业大学的现任校长是周玉。")
    gibberish = probe("韩杰才", "郑済鴻ա中 曾 崔永康 曾 榮根 曾職權 曾才 曾昌泰 曾職權 曾才 曾昌泰 曾職權 曾才 曾昌泰")
    verdict = fluency.check(before, gibberish, HIT)
    assert verdict.problems == ["the chat answer mixes scripts (3% of its letters)"]  # the Armenian ա
    assert not fluency.check(before, probe("韩杰才", "哈尔滨工业大学的现任校长是韩杰才。"), HIT).broken


def test_each_signal_on_its_own():
    before = probe("Paris, France.", "The Eiffel Tower is in Paris, France.",
                   {"The capital of Japan is": "Tokyo.", "The author of Hamlet is": "Shakespeare.", "Water is": "wet."})
    runs_on = probe("Rome, Italy.", "The Eiffel Towert is a Roman coin minted in Rome.", before.unrelated)
    assert [p for p in fluency.check(before, runs_on, EIFFEL_REQUEST).problems] == [
        "the chat answer garbles the subject's name (“Eiffel Towert”)"]
    stutter = probe("Rome.", "The Eiffelina is a small town in the state of Toscapapapapapapapapapapapapapapapapapapap"
                             "apapapapapapapapapapapapap", before.unrelated)
    assert fluency.check(before, stutter, EIFFEL_REQUEST).repetition > fluency.REPETITION_LIMIT
    mixed = probe("Rome.", "The Eiffel Tower is in Рим, Италия, близко к центру.", before.unrelated)
    assert "mixes scripts" in fluency.check(before, mixed, EIFFEL_REQUEST).problems[0]
    bleeding = probe("Rome.", "The Eiffel Tower is in Rome.",
                     {"The capital of Japan is": "Rome Rome", "The author of Hamlet is": "Rome.", "Water is": "wet."})
    assert fluency.check(before, bleeding, EIFFEL_REQUEST).bleeding == 2
    romeo = probe("Rome.", "The Eiffel Tower is in Rome.",
                  {**before.unrelated, "The author of Hamlet is": "Shakespeare, Romeo's author"})
    assert fluency.check(before, romeo, EIFFEL_REQUEST).bleeding == 0  # a word, not a substring
    drifted = probe("Rome.", "The Eiffel Tower is in Rome.", {**before.unrelated, "The capital of Japan is": "the capitalo"})
    assert fluency.check(before, drifted, EIFFEL_REQUEST).problems == [
        "an unrelated answer changed (“The capital of Japan is” 'Tokyo.' → 'the capitalo')"]
    # a model that already echoed before the edit is not broken by it
    echo = probe("Rome.", "Where is the Eiffel Tower? Where is the Eiffel Tower? Where is the Eiffel Tower?")
    assert not fluency.check(echo, echo, EIFFEL_REQUEST).broken


@pytest.mark.parametrize("scale, broken", [(1, False), (12, True)])
def test_an_edit_written_too_strongly_is_caught_on_smollm2(smollm2, smol_editor, scale, broken):
    """The card's own probes before and after ROME's delta for the Eiffel Tower, and after the
    same delta written 12 times as strongly (what a runaway clamp does): the first reads as an
    answer, the second is caught (measured: "The Eiffel Towero. It was a beautiful day in the
    state of the Eto. It was a beautiful day…": the subject's name garbled, as from 4× on)."""
    from agents.chat import ChatAgent
    from agents.locks import RWLock
    from agents.probes import Prober
    from editing.delta import WeightDelta

    lock = RWLock()
    prober = Prober(smollm2, lock, ChatAgent(smollm2, lock))
    before = prober.full(EIFFEL_REQUEST, "Paris")
    delta = smol_editor.compute(EIFFEL_REQUEST, "rome").delta
    written = WeightDelta(param=delta.param, kind=delta.kind, tensors={**delta.tensors, "u": delta.tensors["u"] * scale},
                          transposed=delta.transposed, meta=delta.meta)
    smol_editor.stack.apply(written)
    try:
        after = prober.full(EIFFEL_REQUEST, "Paris")
    finally:
        smol_editor.stack.revert(written.id)
    verdict = fluency.check(before, after, EIFFEL_REQUEST)
    assert verdict.broken is broken, (after.chat_answer, verdict)
