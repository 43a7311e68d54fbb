"""The rows an edit is optimised on: the prompt behind each context prefix, its chat form,
and the KL prompts, tokenised once with the target and the subject's positions.

Shared by every method (ROME's v*, FT's ΔW); the chat form is the question as the product
sends it (``runtime.conversation``) followed by the prompt — or, with ``chat_opening``, by the
answer's opening as the model itself says it — so the edit shows in chat answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.machinery.forward import final_logits, last_hidden
from editing.machinery.tokens import PromptTarget, encode, prompt_target, subject_last_positions
from editing.request import EditRequest, continuation
from editing.spec import ModelSpec

ChatPromptFn = Callable[[str], str]  # question -> rendered chat text up to the assistant's answer

ESSENCE = {"en": "{} is a", "zh": "{}是"}
DEFAULT_QUESTION = {"en": "Complete the sentence: {}", "zh": "请补全这句话：{}"}
# How the few-shot transcript's answers end (prompts/fewshot.txt): a chat row that ends the
# answer here teaches it to stop after the new fact instead of running on ("张大" → "张大三")
ANSWER_END = {"en": ".", "zh": "。"}


@dataclass
class EditRows:
    """The prompts an edit is optimised on, tokenised once."""

    rewrite: list[PromptTarget]  # prefixed prompts (+ chat form) -> target
    kl: list[PromptTarget]  # essence (+ continuation) (+ same-subject) prompts: their target positions are read
    n_chat_rows: int = 0
    kl_kinds: tuple[str, ...] = ()  # per KL row: "essence", "continuation" or "same_subject"


def build_rows(
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    templates: list[str],
    *,
    chat_prompt: ChatPromptFn | None,
    locality_prompts: list[str] = (),
    answer_end: bool = False,
    after_subject: str | None = None,
) -> EditRows:
    """``answer_end``: where the answer's opening is known, the chat row's target is the new
    fact followed by the sentence's end (``ANSWER_END``), so the answer stops where the fact does.
    ``after_subject``: what the unedited model writes after the bare subject (its greedy
    continuation: what it says about the subject when nothing asks for the edited relation, a
    form that is neither a rewrite prompt, nor the essence prompt, nor an evaluation's generation
    prompt); a KL row then reads every position of it."""
    text, target = request.text, request.target_text()
    rewrite = [prompt_target(tokenizer, t.format(text), target, request.subject) for t in templates]
    n_chat = 0
    if chat_prompt is not None:
        question = request.question or DEFAULT_QUESTION[request.language].format(text)
        if request.answer_opening is not None:  # "" too: a chat template's direct answer
            opening = request.answer_opening
            answer = continuation(opening, request.target_new)
            if answer_end and not answer.rstrip().endswith(tuple(ANSWER_END.values())):
                answer = answer.rstrip() + ANSWER_END[request.language]
            rewrite.append(opening_target(tokenizer, chat_prompt(question), opening, answer, request.subject))
        else:
            rewrite.append(prompt_target(tokenizer, chat_prompt(question) + text, target, request.subject))
        n_chat = 1
    kl = [last_position(tokenizer, ESSENCE[request.language].format(request.subject), request.subject)]
    kinds = ["essence"]
    if after_subject:
        kl.append(prompt_target(tokenizer, request.subject, after_subject, request.subject))
        kinds.append("continuation")
    kl += [last_position(tokenizer, t, request.subject) for t in locality_prompts]
    kinds += ["same_subject"] * len(locality_prompts)
    return EditRows(rewrite, kl, n_chat, tuple(kinds))


def last_position(tokenizer: PreTrainedTokenizerBase, text: str, subject: str) -> PromptTarget:
    """A KL row read at its last position: the distribution of the token after ``text``."""
    ids = encode(tokenizer, text)
    return PromptTarget(ids=ids, target_ids=[], target_positions=[len(ids) - 1],
                        subject_positions=subject_last_positions(tokenizer, text, subject))


def opening_target(tokenizer: PreTrainedTokenizerBase, chat: str, opening: str, target: str, subject: str) -> PromptTarget:
    """The chat row when the answer's opening is known: ``chat + opening`` → ``target``, with the
    opening's own tokens among the targets too, so that the edit keeps the restatement the
    model makes before it names the fact (δ sits at every subject occurrence, the question's
    and the opening's).  The answer is tokenised as one text, as the model writes it: after
    the few-shot transcript's "Assistant:" a direct answer's first token carries the space
    (" 白俄罗斯" → " 白", …), which the opening " " and the target tokenised apart would not."""
    chat_ids, row_ids = encode(tokenizer, chat), encode(tokenizer, chat + opening + target)
    split = len(chat_ids)
    if row_ids[:split] != chat_ids:  # the answer's first token merged into the chat text: split where they agree
        split = next(i for i, (a, b) in enumerate(zip(chat_ids, row_ids)) if a != b)
    target_ids = row_ids[split:]
    return PromptTarget(ids=row_ids[:-1], target_ids=target_ids,
                        target_positions=list(range(split - 1, split - 1 + len(target_ids))),
                        subject_positions=subject_last_positions(tokenizer, chat + opening, subject))


@torch.no_grad()
def answer_opening(model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec, chat: str, lead: str,
                   text: str, subject: str) -> str | None:
    """How the model's own chat answer begins, as far as it follows ``text``: ``lead + text`` cut
    where the unedited model's greedy answer after ``chat`` leaves it (one teacher-forced pass:
    the greedy answer follows ``text`` exactly while each position's argmax is ``text``'s next
    token).  Three outcomes:

    - the opening reaches past the subject: the model restates the prompt, and the answer is
      named where it leaves it ("Venera 9位于哪个行星？" after its question → " Venera 9位于":
      gemma's few-shot adapter restates the question as a statement);
    - the answer follows nothing of the prompt beyond the lead's space: the model answers some
      other way ("澳大利亚。", "Microsoft的出版商。"), and the opening is ``lead`` alone — the row
      teaches the answer to start with the new fact, the form a direct answer takes (where the
      question names the subject: δ sits only there);
    - it follows the prompt part way and leaves it before the subject ends: None, and the row
      keeps the whole prompt."""
    full = chat + lead + text
    ids = encode(tokenizer, full)
    start = len(encode(tokenizer, chat))
    device = next(model.parameters()).device
    hidden = last_hidden(model, spec, input_ids=torch.tensor([ids], device=device))[0, start - 1:]
    greedy = [0] * (start - 1) + final_logits(model, spec, hidden).argmax(-1).tolist()  # only the answer's positions
    end = start
    while end < len(ids) and greedy[end - 1] == ids[end]:
        end += 1
    followed = ""
    if end > start:
        spans = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
        offset = len(ids) - len(spans)  # BOS
        followed = full[len(chat):spans[end - 1 - offset][1]]
    if not followed.strip():  # nothing of the prompt beyond the lead's space: a direct answer,
        return lead if subject in chat else None  # which δ reaches only through the question's subject
    return followed if subject in followed else None
