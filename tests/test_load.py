"""A bounded load on loopback (``bench/load.py``): eight gradio_client sessions × five messages,
one edit and one revert in the middle.  No errors, every answer complete, every session sees
the edit after it is applied and not after it is reverted.  Timings are the benchmark's."""

from __future__ import annotations

import pytest
from tests_support import PASSWORD, make_assistant, served_app

from bench.load import run_load

pytestmark = pytest.mark.slow


def test_eight_sessions_chat_through_an_edit_and_a_revert(smollm2, tmp_path):
    assistant = make_assistant(smollm2, tmp_path)
    with served_app(assistant, concurrency=4) as url:  # the queue app.py serves with
        report = run_load(url, sessions=8, max_new_tokens=24, password=PASSWORD)
    assert report.errors == [] and report.wrong_fact == []
    assert report.messages == 40 and report.empty == 0
    assert report.chats_during_edit >= 1, "no chat overlapped the edit"
    assert [e.status for e in assistant.list_edits()] == ["reverted"]
