"""The fluency guard's thresholds, measured: its signals on the unedited models' own answers.

For each built-in model, the edit card's chat answer (the product's chat prompt, the card's
token budget) and the prompt's greedy completion (8 tokens) on the first N questions of
counterfact-dev (English) and zsre-zh-dev (Chinese); prints the share of chat answers that are
an answer (not empty, not the question said back: the few-shot adapter's failures), and the distribution of
``agents.fluency.repetition`` and ``foreign_script`` (and how often the subject's name looks garbled) so the limits in ``agents/fluency.py`` sit
above everything an unedited model says.

    python -m bench.fluency_thresholds [--n 30]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def not_an_answer(question: str, answer: str) -> bool:
    """An adapter failure: nothing before the next turn, the question said back, or a question
    instead of an answer ("The mother tongue of X is French." starts like the question and is an
    answer; "X的出生日期是什么时候" is not)."""
    def norm(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    q, a = norm(question), norm(answer)
    asks = answer.rstrip().endswith(("?", "？")) or any(w in answer for w in ("什么", "哪", "谁", "吗") if w in question)
    return not a or a.startswith(q) or asks


def measure(alias: str, n: int) -> dict:
    import numpy as np

    from agents.chat import ChatAgent
    from agents.fluency import REPETITION_LIMIT, foreign_script, garbled_subject, repetition
    from agents.probes import CHAT_TOKENS
    from editing.evaluation.data import load_cases
    from editing.machinery.probe import greedy_completion
    from runtime.conversation import GenerationSettings
    from runtime.loader import load_model

    loaded = load_model(alias, device="cpu")
    chat = ChatAgent(loaded)
    row: dict = {"model": alias}
    for data, file, language in (("counterfact", "counterfact-dev.json", "en"), ("zsre-zh", "zsre-zh-dev.json", "zh")):
        reps, foreign, garbled, echoes, worst = [], [], 0, [], ("", 0.0)
        for case in load_cases(data, DATA / file, n):
            request = case.request
            question = request.question or request.text
            answer = chat.answer([], question, GenerationSettings(max_new_tokens=CHAT_TOKENS))
            if not_an_answer(question, answer):
                echoes.append(f"{question} -> {answer}"[:160])
            texts = [answer, greedy_completion(loaded.model, loaded.tokenizer, request.text, 8)]
            for text in texts:
                reps.append(repetition(text))
                foreign.append(foreign_script(text, language))
                garbled += language == "en" and garbled_subject(text, request.subject)
                if reps[-1] > worst[1]:
                    worst = (text, reps[-1])
        row[f"{language}_texts"] = len(reps)
        row[f"{language}_repetition_median"] = round(float(np.median(reps)), 3)
        row[f"{language}_repetition_p95"] = round(float(np.quantile(reps, 0.95)), 3)
        row[f"{language}_repetition_max"] = round(max(reps), 3)
        row[f"{language}_foreign_script_max"] = round(max(foreign), 3)
        row[f"{language}_garbled_subject"] = garbled
        row[f"{language}_answers_that_answer"] = round(1 - len(echoes) / (len(reps) // 2), 3)
        row[f"{language}_not_answers"] = echoes[:5]
        row[f"{language}_most_repetitive"] = worst[0][:120]
        row[f"{language}_texts_above_limit"] = sum(r > REPETITION_LIMIT for r in reps)
    return row


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--measure"]:
        print(json.dumps(measure(args[1], int(args[2])), ensure_ascii=False))
        return
    from bench.common import run_child

    n = int(args[args.index("--n") + 1]) if "--n" in args else 30
    for alias in ("smollm2", "gemma3-270m"):
        print(json.dumps(run_child("bench.fluency_thresholds", "--measure", alias, str(n)), ensure_ascii=False, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
