"""The app driven through gradio_client, as a script or another program would use it."""

from __future__ import annotations

import pytest
from gradio_client import Client
from test_service import checksum
from tests_support import PASSWORD, make_assistant, served_app


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
