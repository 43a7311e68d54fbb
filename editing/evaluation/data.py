"""Loaders of the knowledge-editing benchmarks in ``../shared/data`` into one case type.

Conventions (``shared/data/README.md``): CounterFact's edit is ``requested_rewrite``; zsRE's new
target is ``alt`` (EasyEdit's convention) on prompt ``src``; same-subject locality is KnowEdit's
``Relation_Specificity``; CKnowEdit has no subject field, so the text after the prompt's last
colon (the thing asked about) serves as the subject.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from editing.request import EditRequest

DATASETS = ("counterfact", "zsre", "zsre-samesubject", "zsre-zh", "cknowedit")

# Question forms of CounterFact's relations, for chat-level success.
RELATION_QUESTIONS = {
    "P17": "Which country is {} located in?", "P19": "Where was {} born?", "P20": "Where did {} die?",
    "P27": "What is the citizenship of {}?", "P30": "Which continent is {} on?", "P36": "What is the capital of {}?",
    "P37": "What is the official language of {}?", "P39": "What position does {} hold?",
    "P101": "What field does {} work in?", "P103": "What is the mother tongue of {}?",
    "P106": "What is the occupation of {}?", "P108": "Who is the employer of {}?",
    "P127": "Who owns {}?", "P131": "Where is {} located?", "P136": "What genre does {} play?",
    "P138": "What is {} named after?", "P140": "What is the religion of {}?",
    "P159": "Where is the headquarters of {}?", "P176": "Which company produces {}?",
    "P178": "Who developed {}?", "P190": "What is the twin city of {}?", "P264": "What record label is {} on?",
    "P276": "Where is {} located?", "P364": "What is the original language of {}?",
    "P407": "What language is {} written in?", "P413": "What position does {} play?",
    "P449": "Which network first aired {}?", "P463": "What organisation is {} a member of?",
    "P495": "Which country does {} come from?", "P740": "Where was {} formed?", "P937": "Where did {} work?",
    "P1303": "What instrument does {} play?", "P1412": "What language does {} speak?",
    "P641": "What sport does {} play?",
}


class EditCase(BaseModel):
    model_config = ConfigDict(frozen=True)

    case_id: str
    request: EditRequest
    paraphrases: list[str] = []
    # random-unrelated locality: (prompt, answer before the edit or as the data gives it)
    locality: list[tuple[str, str]] = []
    # same subject, other relation
    same_subject: list[tuple[str, str]] = []
    portability: list[tuple[str, str]] = []
    generation_prompts: list[str] = []
    # chat-level success: questions whose answer should now contain the new target
    questions: list[str] = []


def _first(value) -> str:
    return value[0] if isinstance(value, list) else value


def _counterfact(row: dict) -> EditCase:
    rw = row["requested_rewrite"]
    template = RELATION_QUESTIONS.get(rw.get("relation_id", ""), "Complete the sentence: {}")
    question = template.format(rw["subject"]) if "{}" in template else template
    if template.startswith("Complete"):
        question = template.format(rw["prompt"].format(rw["subject"]))
    return EditCase(
        case_id=f"cf-{row['case_id']}",
        request=EditRequest(prompt=rw["prompt"], subject=rw["subject"], target_new=rw["target_new"]["str"],
                            target_true=rw["target_true"]["str"], question=question),
        paraphrases=row.get("paraphrase_prompts", []),
        locality=[(p, rw["target_true"]["str"]) for p in row.get("neighborhood_prompts", [])],
        generation_prompts=row.get("generation_prompts", []),
        questions=[question],
    )


# zsRE has no generation prompts; these open a continuation about the subject, as CounterFact's
# do, for the fluency of what the edited model says about it (``--fluency``)
SUBJECT_GENERATION = {"en": ("{} is", "About {},"), "zh": ("{}是", "关于{}，")}


def _zsre(row: dict, i: int) -> EditCase:
    src = row["src"]
    portability = row.get("portability") or {}
    port = [(portability["New Question"], portability["New Answer"])] if "New Question" in portability else []
    request = EditRequest(prompt=src, subject=row["subject"], target_new=row["alt"],
                          target_true=_first(row.get("answers") or [None]), question=src)
    return EditCase(
        case_id=f"zsre-{i}",
        request=request,
        generation_prompts=[t.format(request.subject) for t in SUBJECT_GENERATION[request.language]],
        paraphrases=[row["rephrase"]] if row.get("rephrase") else [],
        locality=[(row["loc"], row["loc_ans"])] if row.get("loc") else [],
        portability=port,
        questions=[src] + ([row["rephrase"]] if row.get("rephrase") else []),
    )


def _zsre_samesubject(row: dict, i: int) -> EditCase:
    loc = row.get("locality", {}).get("Relation_Specificity", [])
    port = row.get("portability", {}).get("Reasoning", [])
    prompt = row["prompt"]
    return EditCase(
        case_id=f"zsre-ss-{i}",
        request=EditRequest(prompt=prompt, subject=row["subject"], target_new=row["target_new"],
                            target_true=_first(row.get("ground_truth") or [None]), question=prompt),
        paraphrases=[row["rephrase_prompt"]] if row.get("rephrase_prompt") else [],
        same_subject=[(x["prompt"], _first(x["ground_truth"])) for x in loc],
        portability=[(x["prompt"], _first(x["ground_truth"])) for x in port],
        questions=[prompt] + ([row["rephrase_prompt"]] if row.get("rephrase_prompt") else []),
    )


def _cknowedit(row: dict, i: int) -> EditCase | None:
    prompt = row["prompt"]
    parts = re.split(r"[：:]", prompt)
    subject = parts[-1].strip(" ，,。") if len(parts) > 1 else ""
    if not subject or subject not in prompt:
        subject = prompt[-min(len(prompt), 8):]
    return EditCase(
        case_id=f"ckn-{i}",
        request=EditRequest(prompt=prompt, subject=subject, target_new=row["target_new"],
                            target_true=row.get("target_old"), question=prompt),
        paraphrases=list(row.get("rephrase") or []),
        portability=[(x["prompt"], x["answer"]) for x in row.get("portability") or []],
        questions=[prompt],
    )


def load_cases(dataset: str, path: str | Path, n: int | None = None) -> list[EditCase]:
    """Up to ``n`` valid cases of ``dataset`` from ``path`` (records that cannot form a valid
    edit request — e.g. a subject missing from its prompt — are skipped)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    cases: list[EditCase] = []
    for i, row in enumerate(rows):
        try:
            if dataset == "counterfact":
                case = _counterfact(row)
            elif dataset in ("zsre", "zsre-zh"):
                case = _zsre(row, i)
            elif dataset == "zsre-samesubject":
                case = _zsre_samesubject(row, i)
            else:
                case = _cknowedit(row, i)
        except (ValueError, KeyError):
            continue
        if case is not None:
            cases.append(case)
        if n is not None and len(cases) >= n:
            break
    return cases
