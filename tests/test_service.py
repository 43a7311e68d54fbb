"""The self-editing loop on smollm2, without the UI: password, apply, log, revert, replay."""

from __future__ import annotations

import hashlib

import pytest
import torch
from tests_support import PASSWORD, make_assistant, run_together

from agents.proposal import EditProposal
from agents.service import EditServiceError, UnknownProposal
from runtime import load_model
from storage.passwords import WrongPassword

PROPOSAL = EditProposal(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", target_new="Rome",
                        target_old="Paris", question="Where is the Eiffel Tower?", extractor="parser")


def checksum(model) -> str:
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()


def test_wrong_password_changes_nothing(assistant, smollm2):
    before = checksum(smollm2.model)
    pid = assistant.service.register("s", PROPOSAL)
    with pytest.raises(WrongPassword):
        assistant.apply_edit("s", pid, "not the password")
    assert checksum(smollm2.model) == before
    assert assistant.list_edits() == []
    assert assistant.service.log.auth_attempts()[0].success is False


def test_proposal_ids_are_per_session_and_one_time(assistant):
    pid = assistant.service.register("s", PROPOSAL)
    with pytest.raises(UnknownProposal):
        assistant.apply_edit("other-session", pid, PASSWORD)
    assistant.cancel_edit("s", pid)
    with pytest.raises(UnknownProposal):
        assistant.apply_edit("s", pid, PASSWORD)


def test_apply_revert_replay_checkpoint(assistant, smollm2, tmp_path):
    model = smollm2.model
    original = checksum(model)
    pid = assistant.service.register("s", PROPOSAL)
    stages = []
    report = assistant.apply_edit("s", pid, PASSWORD, progress=lambda stage, *rest: stages.append(stage))
    assert {"optimising", "writing weights"} <= set(stages)
    edit = report.edit
    assert edit.status == "applied" and edit.delta_sha256 and edit.layer == smollm2.profile.default_edit_layer
    assert report.after.target_prob > 0.5 > report.before.target_prob and report.lands
    assert report.before.complete and report.after.completion is None  # the rest follows
    parts = list(assistant.finish_report(report))
    assert [p.after.completion is not None for p in parts][:1] == [True] and parts[-1].after.complete
    final = parts[-1]
    assert final.after.completion.startswith("Rome") and "Rome" in final.after.chat_answer
    assert assistant.service.log.get(edit.id).after["chat_answer"] == final.after.chat_answer  # logged
    assert final.after.fluency is not None and not final.after.fluency.broken  # an ordinary edit reads fine
    assert assistant.service.log.get(edit.id).after["fluency"]["problems"] == []
    edited = checksum(model)
    assert edited != original
    with pytest.raises(UnknownProposal):  # the id was used up
        assistant.apply_edit("s", pid, PASSWORD)

    # a restart: fresh weights, the same database -> replay makes the edit effective again
    assistant.service.stack.revert_all()
    assert checksum(model) == original
    restarted = make_assistant(smollm2, tmp_path, db_path=tmp_path / "amend.sqlite")
    assert restarted.service.replay() == []
    assert checksum(model) == edited
    assert "base model + 1 edit" in restarted.model_info()

    # a checkpoint of the edited model loads as a model of its own with the same weights
    record = restarted.save_checkpoint("s", PASSWORD)
    assert record.edit_ids == [edit.id]
    reloaded = load_model("smollm2", device="cpu", source=record.path)
    ids = smollm2.tokenizer("The Eiffel Tower is located in the city of", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(reloaded.model(ids).logits, model(ids).logits)

    # revert through the service: exact original weights, row marked reverted
    reverted = restarted.revert_edit("s", edit.id, PASSWORD)
    assert reverted.status == "reverted" and reverted.reverted_at
    assert checksum(model) == original
    with pytest.raises(EditServiceError):
        restarted.revert_edit("s", edit.id, PASSWORD)


def test_failure_after_pending_restores_weights(assistant, smollm2, monkeypatch):
    original = checksum(smollm2.model)
    real = assistant.service.log.transition

    def failing_transition(edit_id, status, **fields):
        if status == "applied":
            raise OSError("disk full while logging")
        return real(edit_id, status, **fields)

    monkeypatch.setattr(assistant.service.log, "transition", failing_transition)
    pid = assistant.service.register("s", PROPOSAL.model_copy(update={"target_new": "Berlin"}))
    with pytest.raises(EditServiceError, match="disk full"):
        assistant.apply_edit("s", pid, PASSWORD)
    assert checksum(smollm2.model) == original, "a delta that cannot be logged is rolled back"
    [row] = assistant.list_edits()
    assert row.status == "failed" and "disk full" in row.error


def test_an_edit_that_does_not_land_says_so(assistant):
    """One optimisation step cannot make the Eiffel Tower "Berlin": the edit is applied (the person
    may keep it), but the report says the model does not give the new answer yet."""
    pid = assistant.service.register("s", PROPOSAL.model_copy(update={"target_new": "Berlin"}))
    assistant.service.hparams = {"rome": {"v_steps": 1}}
    report = assistant.apply_edit("s", pid, PASSWORD)
    assert report.edit.status == "applied" and not report.lands
    from app import render_report

    assert "does not give the new answer yet" in render_report(report)


def test_the_before_column_is_measured_while_the_card_is_on_screen(assistant, monkeypatch):
    """Registering a proposal starts its "before" probe; Apply uses it unless a field changed."""
    pid = assistant.service.register("s", PROPOSAL)
    pending = assistant.service._pending[pid]
    before = pending.before.result(timeout=300)
    calls = []
    monkeypatch.setattr(assistant.service.prober, "full", lambda *a: calls.append(a) or before)
    report = assistant.apply_edit("s", pid, PASSWORD)
    assert report.before == before and calls == []  # nothing measured again
    assistant.service.stack.revert_all()
    pid = assistant.service.register("s", PROPOSAL)
    assistant.apply_edit("s", pid, PASSWORD, overrides={"target_new": "Madrid"})
    assert [c[0].target_new for c in calls].count("Madrid") == 1  # a changed field: measured again


def test_tampered_delta_is_refused_on_replay(assistant, smollm2, tmp_path):
    pid = assistant.service.register("s", PROPOSAL)
    edit = assistant.apply_edit("s", pid, PASSWORD).edit
    assistant.service.stack.revert_all()
    with open(edit.delta_path, "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    restarted = make_assistant(smollm2, tmp_path, db_path=tmp_path / "amend.sqlite")
    problems = restarted.service.replay()
    assert len(problems) == 1 and "sha256" in problems[0]
    assert restarted.service.n_applied == 0


def test_invalid_override_is_refused(assistant):
    pid = assistant.service.register("s", PROPOSAL)
    with pytest.raises(EditServiceError, match="does not occur"):
        assistant.apply_edit("s", pid, PASSWORD, overrides={"subject": "Colosseum"})


def test_crash_mid_edit_is_marked_failed_at_the_next_start(assistant, smollm2, tmp_path):
    """A kill between the pending row and its outcome leaves a pending row; the restart
    (whose weights never had that edit) marks it failed instead of leaving it pending forever."""
    log = assistant.service.log
    interrupted = log.add_pending(session="s", subject="Eiffel Tower", prompt=PROPOSAL.prompt, target_new="Rome",
                                  method="rome", layer=4)
    restarted = make_assistant(smollm2, tmp_path, db_path=tmp_path / "amend.sqlite")
    [problem] = restarted.service.replay()
    assert f"edit {interrupted.id}" in problem and "interrupted" in problem
    row = restarted.service.log.get(interrupted.id)
    assert row.status == "failed" and "interrupted" in row.error
    assert restarted.service.replay() == []  # reported once


def test_revert_of_an_edit_that_was_not_replayed_says_so(assistant):
    log = assistant.service.log
    record = log.add_pending(session="s", subject="Eiffel Tower", prompt=PROPOSAL.prompt, target_new="Rome",
                             method="rome", layer=4)
    log.transition(record.id, "applied", delta_id="lost")
    with pytest.raises(EditServiceError, match="not in the model"):
        assistant.revert_edit("s", record.id, PASSWORD)
    with pytest.raises(EditServiceError, match="no edit 999"):
        assistant.revert_edit("s", 999, PASSWORD)


def test_two_applies_of_one_proposal_edit_once(assistant, smollm2):
    """Two clicks (or two API calls) racing with the same one-time id: one edit, one refusal."""

    pid = assistant.service.register("s", PROPOSAL)

    def apply():
        try:
            return assistant.apply_edit("s", pid, PASSWORD)
        except UnknownProposal as exc:
            return exc

    results = run_together(apply, apply)
    assert sorted(type(r).__name__ for r in results) == ["EditReport", "UnknownProposal"]
    assert [e.status for e in assistant.list_edits()] == ["applied"] and assistant.service.n_applied == 1
