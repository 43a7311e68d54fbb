"""What a person clicks, in headless Chromium: ask, correct, confirm with the password,
see the before/after card, find the edit in the log.

Runs where Chromium is installed (``apt-get install chromium``); skipped elsewhere.  Set
``AMEND_SCREENSHOTS=DIR`` to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tests_support import PASSWORD, make_assistant, served_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")]


@pytest.fixture
def page_url(smollm2, tmp_path):
    with served_app(make_assistant(smollm2, tmp_path)) as url:
        yield url


def test_correct_a_fact_by_clicking(page_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("AMEND_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 1300})
        page.goto(page_url)
        box = page.get_by_placeholder("Ask something")
        box.fill("Where is the Eiffel Tower?")
        box.press("Enter")
        expect(page.locator(".bot").last).to_contain_text("Paris", timeout=60_000)
        box.fill("Actually, the Eiffel Tower is in Rome.")
        box.press("Enter")
        try:
            expect(page.get_by_text("Proposed edit")).to_be_visible(timeout=30_000)
        finally:
            page.screenshot(path=str(shots / "debug.png"), full_page=True)
        expect(page.get_by_label("New answer")).to_have_value("Rome")
        page.screenshot(path=str(shots / "card.png"), full_page=True)
        page.get_by_label("Edit password", exact=True).fill("wrong password")
        page.get_by_role("button", name="Apply edit").click()
        expect(page.get_by_text("Wrong edit password").first).to_be_visible(timeout=30_000)
        page.get_by_label("Edit password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Apply edit").click()
        expect(page.get_by_text("Edit applied")).to_be_visible(timeout=240_000)
        expect(page.get_by_text("base model + 1 edit")).to_be_visible()
        page.screenshot(path=str(shots / "applied.png"), full_page=True)
        page.get_by_role("button", name="New chat").click()
        box.fill("Where is the Eiffel Tower?")
        box.press("Enter")
        expect(page.locator(".bot").last).to_contain_text("Rome", timeout=60_000)
        page.screenshot(path=str(shots / "after.png"), full_page=True)
        page.get_by_role("tab", name="Edit log").click()
        expect(page.get_by_text("applied", exact=True).filter(visible=True).first).to_be_visible(timeout=10_000)
        expect(page.get_by_text("Eiffel Tower", exact=True).filter(visible=True).first).to_be_visible()
        page.screenshot(path=str(shots / "log.png"), full_page=True)
        browser.close()


def test_correct_a_fact_twice_and_import_a_file_by_clicking(page_url, tmp_path):
    """A second correction of the same fact shows the earlier edit and offers to revert it
    instead; a corrections file is previewed row by row and imported with the password."""
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("AMEND_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    facts = tmp_path / "corrections.csv"
    facts.write_text("subject,prompt,target_new\nToyota,Toyota is a company from the country of,Germany\n"
                     "Nobody,The sky is,green\n", encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 1300})
        page.goto(page_url)
        box = page.get_by_placeholder("Ask something")
        box.fill("Actually, the Eiffel Tower is in Rome.")
        box.press("Enter")
        expect(page.get_by_text("Proposed edit")).to_be_visible(timeout=30_000)
        page.get_by_label("Edit password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Apply edit").click()
        expect(page.get_by_text("Edit applied")).to_be_visible(timeout=240_000)
        page.get_by_role("button", name="Keep").click()
        box.fill("No, the Eiffel Tower is in Berlin.")
        box.press("Enter")
        expect(page.get_by_text("This fact was edited before")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(shots / "supersede.png"), full_page=True)
        page.get_by_label("Edit password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Revert that edit instead").click()
        expect(page.get_by_text("reverted instead")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("base model + 0 edits")).to_be_visible()

        page.get_by_role("tab", name="Edit log").click()
        page.get_by_text("Import corrections").click()  # opens the accordion
        try:
            with page.expect_file_chooser() as chooser:
                page.get_by_text("Click to Upload").first.click()
            chooser.value.set_files(str(facts))
            expect(page.get_by_text("1 not valid")).to_be_visible(timeout=30_000)
        finally:
            page.screenshot(path=str(shots / "import-debug.png"), full_page=True)
        page.screenshot(path=str(shots / "import-preview.png"), full_page=True)
        facts.write_text("subject,prompt,target_new\nToyota,Toyota is a company from the country of,Germany\n",
                         encoding="utf-8")
        page.get_by_label("Clear").filter(visible=True).first.click()  # the file box's ✕: choose another file
        with page.expect_file_chooser() as chooser:
            page.get_by_text("Click to Upload").first.click()
        chooser.value.set_files(str(facts))
        expect(page.get_by_text("all valid")).to_be_visible(timeout=30_000)
        page.get_by_label("Edit password", exact=True).filter(visible=True).last.fill(PASSWORD)
        page.get_by_role("button", name="Import the file").click()
        expect(page.get_by_text("Imported 1 correction(s)")).to_be_visible(timeout=240_000)
        expect(page.get_by_text("base model + 1 edit")).to_be_visible()
        page.screenshot(path=str(shots / "import.png"), full_page=True)
        browser.close()
