"""Bad input, each refused with a clear message and nothing changed (log rows and a weight
checksum compared), on smollm2; property-based tests for request validation.

Every kind tried here is counted in docs/reliability.md.
"""

from __future__ import annotations

import errno
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_service import PROPOSAL
from tests_support import PASSWORD, make_assistant

from agents.assistant import EMPTY_NOTICE
from agents.chat import MAX_MESSAGE_CHARS, GenerationSettings
from agents.inspection import InspectError
from agents.service import EditService, EditServiceError, UnknownProposal
from editing.errors import EditingError
from editing.fingerprint import weights_checksum
from editing.machinery.rows import build_rows
from editing.request import EditRequest

SHORT = GenerationSettings(max_new_tokens=4)


class Unchanged:
    """Asserts on exit that neither the weights nor the log rows changed."""

    def __init__(self, assistant) -> None:
        self.assistant = assistant

    def __enter__(self):
        self.weights = weights_checksum(self.assistant.service.loaded.model)
        self.rows = self.assistant.list_edits()
        return self

    def __exit__(self, *exc):
        assert weights_checksum(self.assistant.service.loaded.model) == self.weights, "the weights changed"
        assert self.assistant.list_edits() == self.rows, "the log changed"


def refused_apply(assistant, match: str, **kwargs) -> None:
    """An Apply with these arguments is refused with ``match``, changes nothing, and leaves the
    proposal usable (only an Apply that goes ahead uses it up)."""
    pid = assistant.service.register("s", PROPOSAL)
    with Unchanged(assistant), pytest.raises(EditServiceError, match=match):
        assistant.apply_edit("s", pid, PASSWORD, **kwargs)
    assert assistant.service.pending("s", pid) == PROPOSAL


# -- the edit card --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["target_new", "subject", "prompt"])
def test_a_cleared_field_is_refused_not_dropped(assistant, field):
    refused_apply(assistant, "is empty", overrides={field: ""})
    refused_apply(assistant, "is empty", overrides={field: "   "})


@pytest.mark.parametrize("layer", [999, -1, 30])
def test_a_bad_layer_is_refused_before_any_probe(assistant, layer, monkeypatch):
    """Refused at once: Apply does not wait for the "before" column (measured in the background
    since the card appeared) nor measure one."""
    monkeypatch.setattr(EditService, "_before", lambda *a: pytest.fail("probed before validating the layer"))
    refused_apply(assistant, "outside 0..29", layer=layer)


def test_prompt_without_the_subject_target_too_long_unknown_method(assistant):
    refused_apply(assistant, "does not occur", overrides={"prompt": "The Colosseum is in"})
    refused_apply(assistant, "at most 32", overrides={"target_new": "Rome " * 40})
    refused_apply(assistant, "Unknown method", method="memit")
    refused_apply(assistant, "must be text", overrides={"target_new": ["Rome"]})


def test_proposal_ids_of_another_session_reused_made_up_or_not_text(assistant):
    pid = assistant.service.register("victim", PROPOSAL)
    with Unchanged(assistant):
        for session, candidate in [("attacker", pid), ("victim", "made-up-id"), ("victim", None), ("victim", 12345)]:
            with pytest.raises(UnknownProposal):
                assistant.apply_edit(session, candidate, PASSWORD)
    assistant.cancel_edit("victim", pid)
    with pytest.raises(UnknownProposal):  # used up
        assistant.cancel_edit("victim", pid)
    assert not [a for a in assistant.service.log.auth_attempts() if a.success], "no password was even tried"


def test_bad_hyperparameters_fail_at_start_with_their_name(smollm2, tmp_path):
    with pytest.raises(ValidationError, match="v_steps"):
        make_assistant(smollm2, tmp_path, hparams={"rome": {"v_steps": 0}})
    with pytest.raises(ValidationError, match="adam_betas"):
        make_assistant(smollm2, tmp_path, hparams={"ft": {"adam_betas": [1.0, 0.9]}})
    with pytest.raises(ValueError, match="unknown method"):
        make_assistant(smollm2, tmp_path, hparams={"memit": {}})


# -- chat messages ----------------------------------------------------------------------------


def test_empty_huge_binary_and_control_character_messages(assistant):
    with Unchanged(assistant):
        for message in ["", "   \n\t", "\x00\x01\x1b[2J"]:
            *_, turn = assistant.chat_stream("s", message, SHORT)
            assert turn.notice == EMPTY_NOTICE and turn.proposal is None
        *_, turn = assistant.chat_stream("s", "x" * (1 << 20), SHORT)  # 1 MB
        assert "1,048,576 characters" in turn.notice and assistant.history("s") == []
        binary = bytes(range(256)).decode("latin-1") + "\ud800 and a lone surrogate"
        for message in [binary, "What is\x00 the capital\x07 of Japan?\x1b"]:
            *_, turn = assistant.chat_stream("s", message, SHORT)
            assert turn.answer and turn.notice is None
            assert "\x00" not in assistant.history("s")[-2]["content"]


def test_the_message_that_froze_the_server_is_answered(assistant):
    """"Actually, " + "not a " × k + ";" backtracked quadratically in the parser (12 s at 32 KB);
    it is now no correction (too long to be one) and gets an ordinary answer."""
    message = "Actually, " + "not a " * 2000 + ";"  # 12 KB, under the message limit
    assert len(message) < MAX_MESSAGE_CHARS
    with Unchanged(assistant):
        *_, turn = assistant.chat_stream("s", message, SHORT)
    assert turn.proposal is None and turn.notice is None


def test_clean_in_chinese(assistant):
    assistant.chat_stream("s", "日本的首都是哪里？", SHORT)
    *_, turn = assistant.chat_stream("s", " 清空 ", SHORT)
    assert turn.notice.startswith("对话历史已清空") and assistant.history("s") == []


# -- files and storage ------------------------------------------------------------------------


def test_corrupted_and_swapped_delta_files_are_not_replayed(assistant, smollm2, tmp_path):
    base = weights_checksum(smollm2.model)
    edits = []
    for target in ("Rome", "Berlin"):
        pid = assistant.service.register("s", PROPOSAL.model_copy(update={"target_new": target}))
        edits.append(assistant.apply_edit("s", pid, PASSWORD).edit)
    pid = assistant.service.register("s", PROPOSAL.model_copy(update={"subject": "Colosseum",
                                                                      "prompt": "The Colosseum is located in the city of",
                                                                      "target_new": "Madrid", "target_old": None}))
    kept = assistant.apply_edit("s", pid, PASSWORD).edit
    assistant.service.stack.revert_all()
    first, second = edits[0].delta_path, edits[1].delta_path
    shutil.move(first, f"{first}.swap")
    shutil.move(second, first)
    shutil.move(f"{first}.swap", second)  # the two files trade places
    restarted = make_assistant(smollm2, tmp_path, db_path=tmp_path / "amend.sqlite")
    problems = restarted.service.replay()
    assert len(problems) == 2 and all("sha256" in p for p in problems)
    assert restarted.service.n_applied == 1 and kept.delta_id in restarted.service.stack
    restarted.service.stack.revert_all()
    assert weights_checksum(smollm2.model) == base


def test_a_locked_or_read_only_log(assistant):
    log = assistant.service.log
    log.db.execute("PRAGMA query_only = ON")  # what a read-only file or volume does to every write
    try:
        refused_apply(assistant, "cannot be written")
        with pytest.raises(EditServiceError, match="cannot be written"):
            assistant.save_checkpoint("s", PASSWORD)
    finally:
        log.db.execute("PRAGMA query_only = OFF")


def test_a_full_disk_while_saving_a_delta_or_a_checkpoint(assistant, smollm2, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    pid = assistant.service.register("s", PROPOSAL)
    before = weights_checksum(smollm2.model)
    monkeypatch.setattr("editing.delta.save_file", full)
    with pytest.raises(EditServiceError, match="No space left"):
        assistant.apply_edit("s", pid, PASSWORD)
    assert weights_checksum(smollm2.model) == before
    [row] = assistant.list_edits()
    assert row.status == "failed" and not list((tmp_path / "deltas").iterdir())

    monkeypatch.setattr(smollm2.model, "save_pretrained", full)
    with pytest.raises(EditServiceError, match="No space left"):
        assistant.save_checkpoint("s", PASSWORD)
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_inspect_refuses_what_it_cannot_do(assistant):
    with pytest.raises(InspectError, match="between 1 and 10"):
        assistant.inspection.trace("The Eiffel Tower is in", "Eiffel Tower", samples=0)
    with pytest.raises(InspectError, match="at most 64 tokens"):
        assistant.inspection.trace("The Eiffel Tower " * 40, "Eiffel Tower")
    with pytest.raises(InspectError, match="at most 256 tokens"):
        assistant.inspection.lens("word " * 300)


# -- requests in any script, and any input at all ---------------------------------------------


@pytest.mark.parametrize("subject, prompt, target", [
    ("爱因斯坦", "爱因斯坦的专业是", "医学"),
    ("🗼 Tower", "The 🗼 Tower is located in", "Rome 🇮🇹"),
    ("برج إيفل", "يقع برج إيفل في مدينة", "روما"),
    ("מגדל אייפל", "מגדל אייפל נמצא בעיר", "רומא"),
    ("Eiffel Tower", "The set {x} holds the Eiffel Tower, in", "Rome"),
])
def test_cjk_emoji_right_to_left_and_braces(tokenizer, subject, prompt, target):
    request = EditRequest(prompt=prompt, subject=subject, target_new=target)
    assert request.text == prompt and request.template.format(subject) == prompt
    request.check_lengths(tokenizer)
    rows = build_rows(tokenizer, request, ["{}", "Some text. {}"], chat_prompt=None)
    assert all(r.subject_positions and r.target_ids for r in rows.rewrite)


TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(["{}", "{x}", "{", "}", " "])


@settings(max_examples=300, deadline=None)
@given(prompt=TEXT, subject=TEXT, target=TEXT)
def test_no_request_crashes_validation(tokenizer, prompt, subject, target):
    try:
        request = EditRequest(prompt=prompt, subject=subject, target_new=target)
        request.check_lengths(tokenizer)
    except (ValidationError, EditingError):
        return
    assert request.subject in request.text and request.template.format(request.subject) == request.text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.sampled_from(["subject", "prompt", "target_new", "target_old", "question", "extra"]),
                              st.none() | TEXT | st.integers(), max_size=5))
def test_no_override_crashes_the_service(assistant, fields):
    """Whatever the card sends: a valid request or a clear ``EditServiceError``, nothing else."""
    try:
        request, proposal = assistant.service._validated(PROPOSAL, fields)
    except EditServiceError:
        return
    assert request.subject == proposal.subject and request.subject in request.text
