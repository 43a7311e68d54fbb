"""Lifelong editing on smollm2: many edits kept at once, re-editing a fact, importing a batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_service import checksum
from tests_support import PASSWORD, make_assistant

from agents.probes import UNRELATED_PROBES
from agents.proposal import EditProposal
from editing.evaluation.data import load_cases
from editing.machinery.probe import greedy_completion, target_logprobs

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact-dev.json"
UNRELATED = [*UNRELATED_PROBES["en"], "The capital of France is"]  # the card's unrelated probes, and one more


def eiffel(target: str, old: str = "Paris") -> EditProposal:
    return EditProposal(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target_new=target,
                        target_old=old, question="Where is the Eiffel Tower?", extractor="parser")


def answer(smollm2) -> str:
    return greedy_completion(smollm2.model, smollm2.tokenizer, "The Eiffel Tower is located in the city of", 3).strip()


def apply(assistant, proposal: EditProposal):
    pid = assistant.service.register("s", proposal)
    return assistant.apply_edit("s", pid, PASSWORD)


def test_twenty_sequential_edits_are_all_kept(smollm2, smol_editor):
    """20 CounterFact edits accumulate (the default, history-preserving update): every edit that
    landed is still predicted after the last one, and unrelated completions do not change."""
    model, tok = smollm2.model, smollm2.tokenizer
    cases = load_cases("counterfact", DATA, 20)
    unrelated = [greedy_completion(model, tok, p, 5) for p in UNRELATED]
    landed = []
    try:
        for case in cases:
            smol_editor.stack.apply(smol_editor.compute(case.request).delta)
            if target_logprobs(model, tok, [case.request.text], [case.request.target_new])[0].hits[0]:
                landed.append(case)
        assert len(landed) >= 16
        kept = [all(s.hits) for s in target_logprobs(model, tok, [c.request.text for c in landed],
                                                     [c.request.target_new for c in landed])]
        assert all(kept), [c.case_id for c, k in zip(landed, kept) if not k]
        assert [greedy_completion(model, tok, p, 5) for p in UNRELATED] == unrelated
    finally:
        smol_editor.stack.revert_all()


def test_a_re_edit_supersedes_and_either_revert_leaves_a_consistent_model(assistant, smollm2, tmp_path):
    """Rome, then Berlin: Berlin wins and the card says it supersedes the Rome edit.  Reverting
    the newer edit gives Rome back (the weights exactly as before it); reverting the older one
    keeps Berlin (the newer edit rebased, replayed the same after a restart)."""
    original = checksum(smollm2.model)
    rome = apply(assistant, eiffel("Rome"))
    assert answer(smollm2).startswith("Rome")
    with_rome = checksum(smollm2.model)
    view = assistant._register("s", eiffel("Berlin"))
    assert [e.id for e in view.supersedes] == [rome.edit.id]
    assistant.cancel_edit("s", view.id)

    berlin = apply(assistant, eiffel("Berlin"))
    assert berlin.supersedes == [rome.edit.id] and answer(smollm2).startswith("Berlin")
    assistant.revert_edit("s", berlin.edit.id, PASSWORD)  # newer one undone: back to Rome, exactly
    assert checksum(smollm2.model) == with_rome and answer(smollm2).startswith("Rome")

    berlin = apply(assistant, eiffel("Berlin"))
    assistant.revert_edit("s", rome.edit.id, PASSWORD)  # older one undone: Berlin stays
    assert answer(smollm2).startswith("Berlin")
    record = assistant.edit(berlin.edit.id)
    assert record.status == "applied" and record.delta_id != berlin.edit.delta_id and Path(record.delta_path).exists()
    assert not Path(berlin.edit.delta_path).exists()
    edited = checksum(smollm2.model)

    assistant.service.stack.revert_all()  # a restart replays the rebased delta
    restarted = make_assistant(smollm2, tmp_path, db_path=tmp_path / "amend.sqlite")
    assert restarted.service.replay() == [] and checksum(smollm2.model) == edited
    restarted.revert_edit("s", berlin.edit.id, PASSWORD)
    assert checksum(smollm2.model) == original and answer(smollm2).startswith("Paris")
    restarted.service.close()


def test_the_newest_of_three_edits_of_a_fact_stays_when_the_first_is_reverted(assistant, smollm2):
    """Rome → Berlin → London, then the Rome edit reverted: the newest edit is the one rebased, so
    the model still says London (not Berlin)."""
    rome = apply(assistant, eiffel("Rome"))
    apply(assistant, eiffel("Berlin"))
    london = apply(assistant, eiffel("London"))
    assert london.supersedes == [rome.edit.id, london.edit.id - 1] and answer(smollm2).startswith("London")
    assistant.revert_edit("s", rome.edit.id, PASSWORD)
    assert answer(smollm2).startswith("London")
    assistant.service.stack.revert_all()


def test_revert_instead_of_applying(assistant, smollm2):
    original = checksum(smollm2.model)
    rome = apply(assistant, eiffel("Rome"))
    view = assistant._register("s", eiffel("Paris", old="Rome"))  # "no, it is in Paris after all"
    record = assistant.revert_superseded("s", view.id, PASSWORD)
    assert record.id == rome.edit.id and record.status == "reverted"
    assert checksum(smollm2.model) == original


def import_file(tmp_path, cases, extra: str = "") -> Path:
    path = tmp_path / "corrections.csv"
    lines = ["subject,prompt,target_new,question"]
    for c in cases:
        lines.append(",".join(json.dumps(x) for x in (c.request.subject, c.request.text, c.request.target_new,
                                                     c.request.question)))
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def test_an_import_of_ten_facts_lands_every_row_and_reverts_as_one(assistant, smollm2, tmp_path):
    original = checksum(smollm2.model)
    # the first ten counterfact-dev facts that a single edit lands (Renault 5 → Toyota does not:
    # its bare prompt keeps "Renault" after a single ROME edit too)
    cases = [c for c in load_cases("counterfact", DATA, 11) if c.case_id != "cf-163"]
    bad = import_file(tmp_path, cases, extra='"Nobody","The sky is","green"\n')
    rows = assistant.preview_import(bad)
    assert [r.error is None for r in rows] == [True] * 10 + [False] and "Nobody" in rows[-1].error
    with pytest.raises(Exception, match="line 12"):
        assistant.import_edits("s", bad, PASSWORD)
    assert checksum(smollm2.model) == original and assistant.list_edits() == []

    report = assistant.import_edits("s", import_file(tmp_path, cases), PASSWORD)
    assert len(report.edits) == 10 and len({e.delta_id for e in report.edits}) == 1
    assert report.landed == 10, [(e.subject, a.target_prob) for e, a in zip(report.edits, report.after)]
    # each fact's chat row opens as the model's answer would, as a single edit's does
    (batch,) = assistant.service.stack.applied
    assert all(r["answer_opening"] is not None for r in batch.meta["requests"])
    for case in cases:
        assert greedy_completion(smollm2.model, smollm2.tokenizer, case.request.text, 3).strip().startswith(
            case.request.target_new.split()[0])
    edited = checksum(smollm2.model)

    assistant.service.stack.revert_all()  # a restart replays the batch's one delta once
    restarted = make_assistant(smollm2, tmp_path, db_path=tmp_path / "amend.sqlite")
    assert restarted.service.replay() == [] and len(restarted.service.stack) == 1
    assert checksum(smollm2.model) == edited
    restarted.revert_edit("s", report.edits[3].id, PASSWORD)
    assert {e.status for e in restarted.list_edits()} == {"reverted"}
    assert checksum(smollm2.model) == original
    restarted.service.close()


def test_the_history_is_what_the_applied_edits_wrote(smollm2, smol_editor):
    """Keys are kept per edit in its delta: reverting the middle one of three drops its key."""
    cases = load_cases("counterfact", DATA, 3)
    deltas = [smol_editor.compute(c.request).delta for c in cases[:1]]
    smol_editor.stack.apply(deltas[0])
    try:
        for case in cases[1:]:
            deltas.append(smol_editor.compute(case.request).delta)
            smol_editor.stack.apply(deltas[-1])
        assert [d.meta["history_keys"] for d in deltas] == [0, 1, 2]
        smol_editor.stack.revert(deltas[1].id)
        assert torch.equal(smol_editor.stack.written_keys(deltas[0].param),
                           torch.cat([deltas[0].keys, deltas[2].keys]))
    finally:
        smol_editor.stack.revert_all()
