"""The thesis's three interactive examples (its Table 4-5) through the app's own path on a
built-in model: ask, correct in chat ("不对，…"), confirm the intent agent's proposal with the
password, then ask the six test questions in fresh conversations; revert.  Prints one markdown
table per example: each question's answer before and after the edit (the default settings, and
each ``--set`` variant given).

    python -m bench.thesis_examples [--model gemma3-270m] [--variant "chat_opening=true chat_row_weight=4" ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

EXAMPLES = [  # (question, correction, test questions) — the thesis's Table 4-5
    ("爱因斯坦的专业是什么？", "不对，爱因斯坦的专业是医学",
     ["爱因斯坦的专业是什么？", "爱因斯坦的妻子是谁？", "牛顿的专业是什么？", "爱因斯坦的妻子的工作是什么？",
      "白宫位于哪里？", "黑龙江的省会是什么？"]),
    ("哈尔滨工业大学的现任校长是谁？", "不对，哈尔滨工业大学的现任校长是韩杰才",
     ["哈尔滨工业大学的现任校长是谁？", "哈尔滨工业大学位于哪里？", "牛顿的专业是什么？", "爱因斯坦的儿子是谁？",
      "故宫位于哪里？", "黑龙江的省会是什么？"]),
    ("张三的父亲是谁？", "不对，张三的父亲是张大",
     ["张三的父亲是谁？", "张大的孩子是谁？", "李四的母亲是谁？", "爱因斯坦的国籍是什么？", "故宫位于哪里？",
      "黑龙江的省会是什么？"]),
]


def last(items):
    """The last item an iterator yields (a streamed turn or report, once complete)."""
    item = None
    for item in items:  # noqa: B007 - only the last one is wanted
        pass
    return item


def ask(assistant, question: str, session: str) -> str:
    turn = last(assistant.chat_stream(session, question))
    return turn.answer.replace("\n", " ").strip() if turn else ""


def run_example(assistant, question: str, correction: str, tests: list[str], tag: str) -> tuple[str, dict, list[str]]:
    """(the proposal in words, the report's verdicts, the answers to ``tests`` after the edit)."""
    from tests_support import PASSWORD

    session = f"{tag}-{question}"
    ask(assistant, question, session)
    turn = last(assistant.chat_stream(session, correction))
    if turn is None or turn.proposal is None:
        return "no proposal", {}, ["–"] * len(tests)
    view = turn.proposal
    proposal = f"{view.proposal.subject} / {view.proposal.prompt} / {view.proposal.target_new}"
    report = assistant.apply_edit(session, view.id, PASSWORD)
    report = last(assistant.finish_report(report)) or report
    check = report.after.fluency
    verdict = {"fluency": "–" if check is None else ("ok" if not check.broken else "; ".join(check.problems))}
    try:
        answers = [ask(assistant, q, f"{tag}-after-{i}") for i, q in enumerate(tests)]
    finally:
        assistant.revert_edit(session, report.edit.id, PASSWORD)
    return proposal, verdict, answers


def main(argv: list[str] | None = None) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tests_support import make_assistant

    from editing.hparams import parse_overrides
    from runtime.loader import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="also run with this hyperparameter (one column per --variant)")
    args = parser.parse_args(argv)
    loaded = load_model(args.model, device="cpu")
    variants = [("default", {})] + [(v, parse_overrides(v.split())) for v in args.variant]  # "k=v k2=v2": one variant
    columns: dict[str, list] = {}
    for name, hparams in variants:
        with tempfile.TemporaryDirectory() as home:
            assistant = make_assistant(loaded, Path(home), hparams={"rome": hparams} if hparams else None)
            try:
                if not columns:
                    columns["before"] = [[ask(assistant, q, f"before-{i}-{j}") for j, q in enumerate(tests)]
                                         for i, (_, _, tests) in enumerate(EXAMPLES)]
                columns[name] = [run_example(assistant, q, c, tests, name) for q, c, tests in EXAMPLES]
            finally:
                assistant.close()
    for i, (question, correction, tests) in enumerate(EXAMPLES):
        print(f"\n### {correction} (asked: {question})\n")
        for name, _ in variants:
            proposal, verdict, _ = columns[name][i]
            print(f"- {name}: proposal {proposal}; fluency check {verdict.get('fluency')}")
        print("\n| question | before | " + " | ".join(f"after ({name})" for name, _ in variants) + " |")
        print("|---|---|" + "---|" * len(variants))
        for j, test in enumerate(tests):
            cells = [columns["before"][i][j]] + [columns[name][i][2][j] for name, _ in variants]
            print(f"| {test} | " + " | ".join(c[:60].replace("|", "/") for c in cells) + " |")


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
