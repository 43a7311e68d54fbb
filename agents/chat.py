"""Chat agent: a session's history in, an answer streamed out token by token.

Generation runs in a worker thread (``TextIteratorStreamer``) under the model's read lock,
so an edit never lands in the middle of an answer.  A Stop event ends it early.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteriaList, TextIteratorStreamer

from agents.locks import RWLock
from runtime.chat_format import Message, StopOnEvent
from runtime.conversation import Conversation, GenerationSettings
from runtime.language import language_of
from runtime.loader import LoadedModel

__all__ = ["ChatAgent", "GenerationSettings", "SessionStore", "clean_message", "is_clean_command", "language_of"]

log = logging.getLogger(__name__)

CLEAN_COMMANDS = ("clean", "清空")
MAX_MESSAGE_CHARS = 16_000  # longer than the context of the built-in models (8k tokens) already
_ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")  # terminal escape sequences (CSI and 2-character)


def is_clean_command(text: str) -> bool:
    return text.strip().lower() in CLEAN_COMMANDS


def clean_message(text: str) -> str:
    """A message as the model may read it: terminal escape sequences and control characters
    other than tab and line breaks removed (NUL, bell), unpaired surrogates (not text; the tokenizer refuses them)
    replaced, surrounding space stripped.  Format characters (zero-width joiners of emoji,
    right-to-left marks) stay."""
    text = _ANSI.sub("", text.encode("utf-8", "replace").decode("utf-8"))
    return "".join(ch for ch in text if ch in "\t\n\r" or unicodedata.category(ch) != "Cc").strip()


@dataclass
class ChatSession:
    history: list[Message] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    last_used: float = field(default_factory=time.monotonic)

    def clear(self) -> None:
        self.history.clear()


class SessionStore:
    """Server-side chat histories, keyed by the browser session id, bounded: a session idle
    for ``idle_s`` is forgotten, and beyond ``max_sessions`` the longest idle goes first, so a
    client that opens session after session cannot grow the server's memory without limit."""

    def __init__(self, *, max_sessions: int = 1000, idle_s: float = 6 * 3600) -> None:
        self.max_sessions, self.idle_s = max_sessions, idle_s
        self._sessions: OrderedDict[str, ChatSession] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(self, session_id: str) -> ChatSession:
        now = time.monotonic()
        with self._lock:
            while self._sessions and now - next(iter(self._sessions.values())).last_used > self.idle_s:
                self._sessions.popitem(last=False)
            session = self._sessions.pop(session_id, None) or ChatSession()
            session.last_used = now
            self._sessions[session_id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return session

    def __len__(self) -> int:
        return len(self._sessions)

    def stop_all(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.stop_event.set()


@dataclass
class PreparedPrompt:
    input_ids: torch.Tensor  # (1, seq)
    dropped_turns: int  # earlier messages left out to fit the context
    truncated_message: bool  # the newest message itself was cut


class ChatAgent:
    """Sessions' answers, streamed: the conversation's history fitted to the context, the
    product's prompt and settings (``runtime.conversation.Conversation``), under the read lock."""

    def __init__(self, loaded: LoadedModel, lock: RWLock | None = None) -> None:
        self.loaded = loaded
        self.lock = lock or RWLock()
        self.conversation = Conversation(loaded)

    @property
    def context_length(self) -> int:
        config = self.loaded.model.config
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048))

    def prompt_text(self, question: str) -> str:
        """The exact text a fresh conversation sends for ``question`` (the editing engine
        optimises edits through it, so corrected facts show up in chat answers)."""
        return self.conversation.prompt_text(question)

    def prepare(self, history: list[Message], message: str, max_new_tokens: int) -> PreparedPrompt:
        """Render the prompt, keeping the newest turns that fit the context window."""
        budget = self.context_length - max_new_tokens
        turns = [*history, {"role": "user", "content": message}]
        dropped = 0
        while True:
            ids = self.conversation.encode(self.conversation.render(turns))
            if len(ids) <= budget or len(turns) == 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[1:]
            dropped += 2
        truncated = False
        if len(ids) > budget:
            # One message longer than the context: keep its end, where the question usually is.
            tok = self.loaded.tokenizer
            msg_ids = tok(message, add_special_tokens=False).input_ids
            overflow = len(ids) - budget
            message = tok.decode(msg_ids[overflow + 8:])
            ids = self.conversation.encode(self.conversation.render([{"role": "user", "content": message}]))
            truncated = True
        return PreparedPrompt(torch.tensor([ids], device=self.loaded.device), dropped, truncated)

    def stream(
        self,
        history: list[Message],
        message: str,
        settings: GenerationSettings | None = None,
        stop_event: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the answer so far after each new piece of text; the last value is final."""
        settings = settings or GenerationSettings()
        stop_event = stop_event or threading.Event()
        prepared = self.prepare(history, message, settings.max_new_tokens)
        tok = self.loaded.tokenizer
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=settings.timeout_s)
        # A stop string (the few-shot adapter's next "User:" turn) is found in the text the
        # streamer already decodes; the consumer below then sets `halt`.  Decoding again inside
        # a stopping criterion cost 26% of gemma3-270m's speed (bench/chat_speed.py).
        halt = threading.Event()
        kwargs = self.conversation.generate_kwargs(prepared.input_ids, settings)
        kwargs.update(streamer=streamer, stopping_criteria=StoppingCriteriaList([StopOnEvent(stop_event),
                                                                                 StopOnEvent(halt)]))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self.lock.read(), torch.inference_mode():
                    self.loaded.model.generate(**kwargs)
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        text = ""
        notes = []
        if prepared.truncated_message:
            notes.append("(Your message was longer than the model's context and was shortened.)")
        for piece in streamer:
            text += piece
            shown = self.conversation.finish(text)
            if len(shown) < len(text.strip()):
                halt.set()
            yield shown
        worker.join()
        if errors:
            raise errors[0]
        final = self.conversation.finish(text)
        if notes:
            final = final + "\n\n" + " ".join(notes)
        yield final

    def complete(self, prompt: str, settings: GenerationSettings | None = None) -> str:
        """Greedy raw completion of ``prompt`` (the intent agent's LLM extractor)."""
        settings = settings or GenerationSettings()
        ids = torch.tensor([self.conversation.encode(prompt)], device=self.loaded.device)
        kwargs = self.conversation.generate_kwargs(ids, GenerationSettings(max_new_tokens=settings.max_new_tokens))
        with self.lock.read(), torch.inference_mode():
            out = self.loaded.model.generate(**kwargs)
        return self.loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def answer(self, history: list[Message], message: str, settings: GenerationSettings | None = None) -> str:
        """The whole answer at once (the edit card's probes)."""
        *_, final = self.stream(history, message, settings)
        return final
