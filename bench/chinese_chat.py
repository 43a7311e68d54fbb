"""Why an edit that lands on its prompt misses in chat: for zsRE-zh cases on gemma3-270m, the
chat answer before and after a ROME edit made through the product's path, and the
teacher-forced probability of each target token on the bare prompt and on the chat row the
edit was optimised on (docs/chinese.md).

    python -m bench.chinese_chat zsre-2,zsre-7,zsre-10 [--set chat_opening=true] [--model gemma3-270m]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "zsre-zh-dev.json"


@torch.no_grad()
def target_probs(model, tokenizer, context: str, target: str) -> list[float]:
    """P(each target token | context and the target tokens before it)."""
    from editing.machinery.tokens import encode

    context_ids, target_ids = encode(tokenizer, context), tokenizer(target, add_special_tokens=False).input_ids
    logp = model(torch.tensor([context_ids + target_ids])).logits[0, len(context_ids) - 1:-1].float().log_softmax(-1)
    return [round(math.exp(float(logp[i, t])), 3) for i, t in enumerate(target_ids)]


def main(argv: list[str] | None = None) -> None:
    from editing.engine import Editor
    from editing.evaluation.data import load_cases
    from editing.hparams import hparams_for, parse_overrides
    from runtime.conversation import Conversation
    from runtime.loader import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", help="comma-separated case ids, e.g. zsre-2,zsre-7")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    loaded = load_model(args.model, device="cpu")
    editor, conversation = Editor.for_model(loaded), Conversation(loaded)
    hparams = hparams_for("rome", parse_overrides(args.set))
    wanted = args.cases.split(",")
    cases = {c.case_id: c for c in load_cases("zsre-zh", DATA) if c.case_id in wanted}
    for case_id in wanted:
        request = cases[case_id].request
        rows = {"bare": request.text, "chat row": conversation.prompt_text(request.question) + request.text}
        record = {"case": case_id, "question": request.question, "target": request.target_new,
                  "target_tokens": len(loaded.tokenizer(request.target_new, add_special_tokens=False).input_ids),
                  "answer_before": conversation.answer(request.question)}
        record["before"] = {k: target_probs(loaded.model, loaded.tokenizer, v, request.target_text()) for k, v in rows.items()}
        outcome = editor.compute(request, "rome", hparams=hparams)
        opening = outcome.delta.meta["request"].get("answer_opening")
        if opening:
            rows["chat row"] = conversation.prompt_text(request.question) + opening
        editor.stack.apply(outcome.delta)
        try:
            record["answer_after"] = conversation.answer(request.question)
            record["after"] = {k: target_probs(loaded.model, loaded.tokenizer, v, request.target_text())
                               for k, v in rows.items()}
        finally:
            editor.stack.revert(outcome.delta.id)
        record["answer_opening"] = opening
        print(json.dumps(record, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
