"""The page's handlers, called directly as plain functions (no browser, no server)."""

from __future__ import annotations

import pytest
from tests_support import PASSWORD, make_assistant

from app import SKIP, Caller, Page, PageError

ME = Caller("session-1", "127.0.0.1")


@pytest.fixture
def page(smollm2, tmp_path):
    assistant = make_assistant(smollm2, tmp_path)
    yield Page(assistant)
    assistant.service.close()
    assistant.service.stack.revert_all()


def test_a_correction_opens_the_card_and_apply_streams_the_report(page):
    *_, last = page.chat(ME, "Where is the Eiffel Tower?")
    assert "Paris" in last["chatbot"][-1]["content"] and last["card"] is False
    steps = list(page.chat(ME, "Actually, the Eiffel Tower is in Rome."))
    assert steps[0]["msg"] == "" and all(s.get("msg", SKIP) is SKIP for s in steps[1:])
    card = steps[-1]
    assert card["card"] is True and card["subject"] == "Eiffel Tower" and card["target_new"] == "Rome"

    parts = list(page.apply(ME, card["pid"], PASSWORD, card["subject"], card["prompt"], card["target_new"], "rome",
                            4, False))
    first = parts[0]
    assert first["result_card"] is True and first["card"] is False and first["password"] == ""
    assert "Edit applied." in first["result_md"] and "… (measuring)" in first["result_md"]
    assert first["table"][0][2] == "applied" and "1 edit" in first["info"]
    assert "… (measuring)" not in parts[-1]["result_md"] and "Rome" in parts[-1]["result_md"]

    detail = page.detail(ME, first["last_edit"])["detail"]
    assert detail["question"] == "Where is the Eiffel Tower?" and "session" not in detail
    assert "question" not in page.detail(Caller("someone-else"), first["last_edit"])["detail"]
    assert page.select(0, first["table"]) == {"edit_id": first["last_edit"]}
    assert page.inspect_edit(first["last_edit"])["tab"] == "inspect"
    reverted = page.revert(ME, first["last_edit"], PASSWORD)
    assert "reverted" in reverted["notice"] and reverted["table"][0][2] == "reverted"


def test_controls_with_values_the_page_cannot_use(page):
    with pytest.raises(PageError, match="whole number"):
        list(page.apply(ME, "x", PASSWORD, "s", "p", "t", "rome", 2.5, False))
    with pytest.raises(PageError, match="temperature"):
        list(page.chat(ME, "Hi", temperature="hot"))
    with pytest.raises(PageError, match="1–512"):
        list(page.chat(ME, "Hi", max_new_tokens=10_000))
    with pytest.raises(PageError, match="CSV or JSON"):
        page.export("xml")
    with pytest.raises(PageError, match="Choose"):
        page.revert(ME, None, PASSWORD)
    assert page.select(99, []) == {"edit_id": None}


def test_cancel_says_so_and_an_unknown_proposal_is_an_error(page):
    from agents.service import UnknownProposal

    *_, card = page.chat(ME, "Actually, the Eiffel Tower is in Rome.")
    assert page.cancel(ME, card["pid"])["notice"].startswith("Proposal cancelled")
    with pytest.raises(UnknownProposal):  # no longer "cancelled" when there was nothing to cancel
        page.cancel(ME, card["pid"])


def test_a_second_correction_of_a_fact_offers_to_revert_the_first_instead(page):
    *_, card = page.chat(ME, "Actually, the Eiffel Tower is in Rome.")
    assert card["supersede_row"] is False
    list(page.apply(ME, card["pid"], PASSWORD, card["subject"], card["prompt"], card["target_new"], "rome", 4, False))
    *_, again = page.chat(ME, "No, the Eiffel Tower is in Berlin.")
    assert again["supersede_row"] is True and "#1" in again["supersede_note"] and "Rome" in again["supersede_note"]
    done = page.revert_instead(ME, again["pid"], PASSWORD)
    assert done["card"] is False and "Edit 1 reverted instead" in done["notice"] and done["table"][0][2] == "reverted"


def test_import_previews_every_row_then_applies_them_as_one(page, tmp_path):
    path = tmp_path / "facts.csv"
    path.write_text("subject,prompt,target_new\nEiffel Tower,The Eiffel Tower is located in the city of,Rome\n"
                    "Nobody,The sky is,green\n", encoding="utf-8")
    preview = page.preview_import(str(path))
    assert [row[-1] == "ok" for row in preview["import_preview"]] == [True, False]
    assert "1 not valid" in preview["import_notice"]
    with pytest.raises(Exception, match="line 3"):
        page.import_edits(ME, str(path), PASSWORD)
    path.write_text("subject,prompt,target_new\nEiffel Tower,The Eiffel Tower is located in the city of,Rome\n"
                    "Toyota,Toyota is a company from the country of,Germany\n", encoding="utf-8")
    done = page.import_edits(ME, str(path), PASSWORD)
    assert "Imported 2 correction(s)" in done["import_notice"] and [r[2] for r in done["table"]] == ["applied"] * 2
    reverted = page.revert(ME, done["table"][0][0], PASSWORD)
    assert "with the rest of its import" in reverted["notice"]
    assert [r[2] for r in reverted["table"]] == ["reverted"] * 2
