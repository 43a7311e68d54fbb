"""The app driven through gradio_client, as a script or another program would use it."""

from __future__ import annotations

import pytest
from gradio_client import Client
from test_service import checksum
from tests_support import PASSWORD, make_assistant, served_app

from agents.proposal import EditProposal

PROPOSAL_EN = EditProposal(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of",
                           target_new="Rome", target_old="Paris", extractor="parser")


@pytest.fixture
def served(smollm2, tmp_path):
    assistant = make_assistant(smollm2, tmp_path)
    with served_app(assistant) as url:
        yield assistant, Client(url, verbose=False)


def last_answer(chat_output) -> str:
    history = chat_output[0]
    content = history[-1]["content"]
    if isinstance(content, list):  # Gradio 6 message content is a list of blocks
        content = " ".join(block.get("text", "") for block in content if isinstance(block, dict))
    return content


def test_edit_loop_through_the_api(served, smollm2):
    assistant, client = served
    original = checksum(smollm2.model)

    out = client.predict("Where is the Eiffel Tower?", api_name="/chat")
    assert "Paris" in last_answer(out)

    out = client.predict("Actually, the Eiffel Tower is in Rome.", api_name="/chat")
    proposal = out[3]
    assert proposal["proposal"]["subject"] == "Eiffel Tower" and proposal["proposal"]["target_new"] == "Rome"
    pid = proposal["id"]

    with pytest.raises(Exception, match="Wrong edit password"):
        client.predict(pid, "wrong", "Eiffel Tower", proposal["proposal"]["prompt"], "Rome", "rome", proposal["layer"],
                       api_name="/apply_edit")
    assert checksum(smollm2.model) == original

    result = client.predict(pid, PASSWORD, "Eiffel Tower", proposal["proposal"]["prompt"], "Rome", "rome", proposal["layer"],
                            api_name="/apply_edit")
    report = next(x for x in result if isinstance(x, dict) and "edit" in x)
    assert report["edit"]["status"] == "applied"
    edit_id = report["edit"]["id"]

    client.predict(api_name="/clean")
    assert "Rome" in last_answer(client.predict("Where is the Eiffel Tower?", api_name="/chat"))

    table = client.predict("", "all", api_name="/list_edits")
    assert table["data"][0][0] == edit_id and table["data"][0][2] == "applied"

    client.predict(edit_id, PASSWORD, api_name="/revert_edit")
    assert checksum(smollm2.model) == original
    client.predict(api_name="/clean")
    assert "Paris" in last_answer(client.predict("Where is the Eiffel Tower?", api_name="/chat"))


def test_clean_by_typing(served):
    assistant, client = served
    client.predict("What is the capital of France?", api_name="/chat")
    out = client.predict("  clean ", api_name="/chat")
    assert out[0] == [] and "cleared" in out[2]


def test_cli_unknown_model_is_one_line(capsys, tmp_path):
    import app

    code = app.main(["--model", "no-such-model", "--home", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: unknown model 'no-such-model'")


@pytest.mark.slow
def test_chinese_correction_on_gemma(gemma, tmp_path):
    """爱因斯坦的专业是什么？ → 不对，爱因斯坦的专业是医学 → apply → clean → the answer says 医学."""
    assistant = make_assistant(gemma, tmp_path)
    with served_app(assistant) as url:
        client = Client(url, verbose=False)
        assert "医学" not in last_answer(client.predict("爱因斯坦的专业是什么？", api_name="/chat"))
        out = client.predict("不对，爱因斯坦的专业是医学", api_name="/chat")
        proposal = out[3]
        assert proposal["proposal"]["subject"] == "爱因斯坦" and proposal["proposal"]["target_new"] == "医学"
        p = proposal["proposal"]
        result = client.predict(proposal["id"], PASSWORD, p["subject"], p["prompt"], p["target_new"], "rome",
                                proposal["layer"], api_name="/apply_edit")
        report = next(x for x in result if isinstance(x, dict) and "edit" in x)
        assert report["edit"]["status"] == "applied"
        client.predict(api_name="/clean")
        assert "医学" in last_answer(client.predict("爱因斯坦的专业是什么？", api_name="/chat"))


# -- privacy and authentication, over HTTP as a stranger would try them ------------------------


def call_http(url: str, api_name: str, data: list) -> str:
    """Gradio's plain HTTP API: start the call, then read its event stream to the end."""
    import httpx

    started = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=60)
    started.raise_for_status()
    event_id = started.json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=300).text


def test_direct_http_calls_without_a_proposal_or_password_change_nothing(served, smollm2):
    assistant, client = served
    url = client.src
    original = checksum(smollm2.model)
    pid = assistant.service.register("someone-else", PROPOSAL_EN)
    for api_name, data in [
        ("apply_edit", ["made-up-id", PASSWORD, "Eiffel Tower", PROPOSAL_EN.prompt, "Rome", "rome", 4, False]),
        ("apply_edit", [pid, PASSWORD, "Eiffel Tower", PROPOSAL_EN.prompt, "Rome", "rome", 4, False]),  # not ours
        ("revert_edit", [1, "wrong password"]),
        ("save_checkpoint", [""]),
    ]:
        assert "event: error" in call_http(url, api_name, data), api_name
    assert checksum(smollm2.model) == original and assistant.list_edits() == []
    assert not (assistant.checkpoints_dir.exists() and list(assistant.checkpoints_dir.iterdir()))


def test_no_endpoint_gives_away_a_session_or_its_messages(served, smollm2, caplog):
    """A victim chats and edits; a stranger reads every public endpoint, then takes the session
    value the log holds for the victim as its own session id: nothing of the victim's comes back."""
    import logging

    caplog.set_level(logging.DEBUG)
    assistant, victim = served
    stranger = Client(victim.src, verbose=False)
    question, private = "Where is the Eiffel Tower?", "My account number is 4242"
    victim.predict(private, api_name="/chat")
    victim.predict(question, api_name="/chat")
    out = victim.predict("Actually, the Eiffel Tower is in Rome.", api_name="/chat")
    p = out[3]
    result = victim.predict(p["id"], PASSWORD, "Eiffel Tower", p["proposal"]["prompt"], "Rome", "rome", p["layer"],
                            False, api_name="/apply_edit")
    edit_id = next(x for x in result if isinstance(x, dict) and "edit" in x)["edit"]["id"]
    stored = assistant.service.log.get(edit_id)
    assert stored.session not in str(result)  # not even the pseudonym comes back
    assert stored.question == question  # the question the correction answered is kept, for the victim

    seen = [stranger.predict("", "all", api_name="/list_edits"), stranger.predict(edit_id, api_name="/edit_detail")]
    for fmt in ("CSV", "JSON"):
        with open(stranger.predict(fmt, api_name="/export_edits"), encoding="utf-8") as f:
            seen.append(f.read())
    text = str(seen)
    for secret in (victim.session_hash, stored.session, question, private, PASSWORD):
        assert secret not in text
    assert victim.predict(edit_id, api_name="/edit_detail")["question"] == question  # the asker sees it

    stranger.session_hash = stored.session  # "captured" from the log: a pseudonym, not a session id
    history = stranger.predict("Hello", api_name="/chat")[0]
    assert all(private not in str(m) and question not in str(m) for m in history) and len(history) == 2
    hash_ = assistant.service.log.setting("edit_password_hash")
    # what the server logged (the test's own HTTP client logs its URLs, session ids included)
    server_log = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                            if not r.name.startswith(("httpx", "httpcore", "gradio_client")))
    assert server_log and PASSWORD not in server_log and hash_ not in server_log
    assert victim.session_hash not in server_log


def test_an_unrelated_previous_message_is_not_stored_as_the_question(served):
    assistant, client = served
    client.predict("What is 2 + 2?", api_name="/chat")
    proposal = client.predict("Actually, the Eiffel Tower is in Rome.", api_name="/chat")[3]
    assert proposal["proposal"]["question"] is None


def test_login_with_auth(smollm2, tmp_path):
    from storage.passwords import UserStore

    assistant = make_assistant(smollm2, tmp_path)
    users = UserStore(assistant.service.log)
    users.add("ada", "lovelace")
    with served_app(assistant, auth=users.verify) as url:
        with pytest.raises(Exception):  # noqa: B017 - gradio_client's error for a page behind a login
            Client(url, verbose=False).predict("Hello", api_name="/chat")
        with pytest.raises(Exception):  # noqa: B017
            Client(url, verbose=False, auth=("ada", "wrong"))
        client = Client(url, verbose=False, auth=("ada", "lovelace"))
        assert last_answer(client.predict("What is the capital of France?", api_name="/chat"))
    logins = [a.success for a in assistant.service.log.auth_attempts() if a.action == "login"]  # newest first
    assert logins[0] is True and False in logins


def test_an_unexpected_error_reaches_the_client_as_a_sentence(served, monkeypatch):
    assistant, client = served

    def broken(*args, **kwargs):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(assistant, "list_edits", broken)
    with pytest.raises(Exception, match=r"Something went wrong \(RuntimeError: the disk went away\)"):
        client.predict("", "all", api_name="/list_edits")
