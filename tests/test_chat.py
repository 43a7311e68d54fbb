"""Chat behaviour on the built-in models: answers, Chinese, clean, stop, long input."""

from __future__ import annotations

import threading
import time

import pytest

from agents.assistant import Assistant
from agents.chat import ChatAgent, GenerationSettings, is_clean_command


def test_smollm2_knows_paris(smollm2):
    assert "Paris" in ChatAgent(smollm2).answer([], "What is the capital of France?")


@pytest.mark.slow
def test_gemma_answers_in_english_and_chinese(gemma):
    agent = ChatAgent(gemma)
    assert "Paris" in agent.answer([], "What is the capital of France?")
    assert "巴黎" in agent.answer([], "法国的首都是哪里？")


def test_clean_command_variants():
    assert is_clean_command("clean") and is_clean_command("  CLEAN ") and is_clean_command("Clean\n")
    assert not is_clean_command("clean up") and not is_clean_command("")


def test_history_is_used_and_cleaned(smollm2):
    agent = ChatAgent(smollm2)
    history = [{"role": "user", "content": "My name is Zorblax."},
               {"role": "assistant", "content": "Nice to meet you, Zorblax."}]
    prompt = agent.prepare(history, "What is my name?", 32)
    assert "Zorblax" in smollm2.tokenizer.decode(prompt.input_ids[0])
    fresh = agent.prepare([], "What is my name?", 32)
    assert "Zorblax" not in smollm2.tokenizer.decode(fresh.input_ids[0])


def test_stop_ends_generation_early(smollm2):
    agent = ChatAgent(smollm2)
    stop = threading.Event()
    settings = GenerationSettings(max_new_tokens=400)
    start = time.perf_counter()
    pieces = 0
    for _text in agent.stream([], "Write a very long story about a dragon.", settings, stop):
        pieces += 1
        if pieces == 5:
            stop.set()
    assert time.perf_counter() - start < 20  # 400 tokens would take ~30 s here
    assert pieces < 60


def test_overlong_message_is_truncated_with_note(smollm2):
    agent = ChatAgent(smollm2)
    huge = "word " * 12000  # far beyond the 8192-token context
    prepared = agent.prepare([], huge, 16)
    assert prepared.truncated_message
    assert prepared.input_ids.shape[1] <= agent.context_length - 16


def test_old_turns_dropped_to_fit(smollm2):
    agent = ChatAgent(smollm2)
    long_turn = "blah " * 3000
    history = [{"role": "user", "content": long_turn}, {"role": "assistant", "content": "ok"}] * 2
    prepared = agent.prepare(history, "Hello", 64)
    assert prepared.dropped_turns >= 2
    assert prepared.input_ids.shape[1] <= agent.context_length - 64


def test_assistant_clean_and_empty(smollm2, tmp_path):
    from tests_support import make_assistant

    assistant: Assistant = make_assistant(smollm2, tmp_path)
    turns = list(assistant.chat_stream("s", "   "))
    assert turns[-1].notice and "empty" in turns[-1].notice
    list(assistant.chat_stream("s", "What is the capital of France?"))
    assert len(assistant.history("s")) == 2
    turns = list(assistant.chat_stream("s", " Clean "))
    assert turns[-1].history == [] and assistant.history("s") == []
    assert "cleared" in turns[-1].notice


def test_sessions_are_bounded_by_count_and_idle_time(monkeypatch):
    """A client opening session after session cannot grow the server's memory: beyond the cap the
    longest-idle session goes, and an idle one is forgotten after the stated time."""
    import agents.chat
    from agents.chat import SessionStore

    clock = [1000.0]
    monkeypatch.setattr(agents.chat.time, "monotonic", lambda: clock[0])
    store = SessionStore(max_sessions=3, idle_s=60)
    store.get("owner").history.append({"role": "user", "content": "keep me"})
    for i in range(100):
        clock[0] += 0.1
        store.get(f"flood-{i}")
        store.get("owner")  # in use, so never the longest idle
    assert len(store) == 3 and store.get("owner").history
    clock[0] += 61
    store.get("newcomer")
    assert len(store) == 1 and not store.get("owner").history  # the idle owner was forgotten


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_the_measured_answer_is_the_product_answer(which, request):
    """The evaluation's chat-level metric asks ``Conversation.answer``; the chat agent streams
    through the same prompt and settings: the two answers are byte-identical, and the editor
    optimises edits through that same prompt (``Editor.for_model``)."""
    from editing.engine import Editor
    from runtime.conversation import Conversation

    loaded = request.getfixturevalue(which)
    agent, conversation = ChatAgent(loaded), Conversation(loaded)
    for question in ("Where is the Eiffel Tower?", "日本的首都是哪里？"):
        assert conversation.answer(question) == agent.answer([], question)
        assert Editor.for_model(loaded).chat_prompt(question) == agent.prompt_text(question)
    assert conversation.answer("Who wrote Hamlet?", done=lambda shown: "Shakespeare" in shown)
