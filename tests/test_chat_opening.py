"""The chat row's answer opening (``chat_opening``): the answer begins as the model begins it,
and the edit then shows in a fresh chat answer where the question-form row garbled it."""

from __future__ import annotations

from editing.engine import Editor
from editing.machinery.rows import answer_opening, build_rows, opening_target
from editing.request import EditRequest
from runtime.conversation import Conversation

VENERA = EditRequest(prompt="Venera 9位于哪个行星？", subject="Venera 9", target_new="土卫六", target_true="金星",
                     question="Venera 9位于哪个行星？")


def test_the_opening_is_the_model_restating_the_question(gemma):
    """gemma's few-shot adapter answers a Chinese question by restating it as a statement; the
    opening is that statement up to where the question word stood, after the transcript's space."""
    conversation = Conversation(gemma)
    chat = conversation.prompt_text(VENERA.question)
    editor = Editor.for_model(gemma)
    opening = answer_opening(gemma.model, gemma.tokenizer, editor.spec, chat, conversation.answer_lead,
                             VENERA.text, VENERA.subject)
    assert opening == " Venera 9位于"
    # an answer that does not follow the prompt at all is a direct answer: the opening is the
    # transcript's space alone, and the row teaches the answer to start with the new fact
    assert answer_opening(gemma.model, gemma.tokenizer, editor.spec, chat, conversation.answer_lead,
                          "哪个行星上有Venera 9？", "Venera 9") == " "
    # ... unless the question does not name the subject (δ would reach the answer nowhere)
    assert answer_opening(gemma.model, gemma.tokenizer, editor.spec, conversation.prompt_text("它位于哪个行星？"),
                          conversation.answer_lead, "哪个行星上有Venera 9？", "Venera 9") is None


def test_a_direct_answer_is_tokenised_as_the_model_writes_it(gemma):
    """After "Assistant:" the answer's first token carries the space (" 白"), as the model
    generates it; the space and the target tokenised apart would give " " + "白"."""
    tok = gemma.tokenizer
    chat = Conversation(gemma).prompt_text("Brem来自哪个国家？")
    row = opening_target(tok, chat, " ", "白俄罗斯", "Brem")
    assert tok.decode(row.target_ids) == " 白俄罗斯" and tok.decode(row.target_ids[:1]) == " 白"
    assert tok.decode(row.ids[:row.target_positions[0] + 1]).endswith("Assistant:")


def test_the_opening_tokens_are_kept_and_the_subject_found_twice(gemma):
    chat = Conversation(gemma).prompt_text(VENERA.question)
    tok = gemma.tokenizer
    row = opening_target(tok, chat, " Venera 9位于", "土卫六", "Venera 9")
    target_ids = tok("土卫六", add_special_tokens=False).input_ids
    assert row.target_ids[-len(target_ids):] == target_ids and len(row.target_ids) > len(target_ids)
    assert tok.decode(row.target_ids[:-len(target_ids)]).strip() == "Venera 9位于"
    assert len(row.subject_positions) == 2  # the question's and the answer's
    assert row.ids[row.target_positions[0] + 1:] == row.target_ids[:-1]  # teacher forcing lines up


def test_the_answer_can_end_after_the_new_fact(gemma):
    """``answer_end``: the chat row's answer stops after the fact, in the question's language,
    so a name is not run on into the old one; the other rows and the default are unchanged."""
    tok = gemma.tokenizer
    chat_prompt = Conversation(gemma).prompt_text
    request = VENERA.model_copy(update={"answer_opening": " Venera 9位于"})
    plain = build_rows(tok, request, ["{}"], chat_prompt=chat_prompt)
    ended = build_rows(tok, request, ["{}"], chat_prompt=chat_prompt, answer_end=True)
    assert tok.decode(ended.rewrite[-1].target_ids).endswith("土卫六。")
    assert ended.rewrite[-1].target_ids[:-1] == plain.rewrite[-1].target_ids  # one token more: "。"
    assert ended.rewrite[0].target_ids == plain.rewrite[0].target_ids  # the prompt's own row: no end
    english = EditRequest(prompt="The Eiffel Tower is in", subject="Eiffel Tower", target_new="Rome",
                          answer_opening=" The Eiffel Tower is in")
    row = build_rows(tok, english, ["{}"], chat_prompt=chat_prompt, answer_end=True).rewrite[-1]
    assert tok.decode(row.target_ids).endswith(" Rome.")


def test_with_the_opening_the_edit_shows_in_the_chat_answer(gemma):
    """Measured on zsRE-zh (docs/chinese.md): with the question repeated in the chat row this
    edit's chat answer was "Venera 9土は正方形に置かれます…"; with the model's own opening kept it
    is "Venera 9位于土卫六"."""
    editor = Editor.for_model(gemma)
    outcome = editor.compute(VENERA, "rome", hparams={"chat_opening": True})
    assert outcome.delta.meta["request"]["answer_opening"] == " Venera 9位于"
    editor.stack.apply(outcome.delta)
    try:
        answer = Conversation(gemma).answer(VENERA.question)
    finally:
        editor.stack.revert(outcome.delta.id)
    assert "土卫六" in answer, answer
