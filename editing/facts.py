"""A file of corrections: many facts to write at once (CSV with a header, or JSON Lines).

Columns / keys: ``subject``, ``prompt`` (contains the subject, or ``{}`` where it goes),
``target_new`` (also accepted: ``new_answer``, ``new answer``, ``target``) and, optionally,
``question`` (the chat form) and ``target_old``.  Each row becomes an ``EditRequest`` or says
what is wrong with it; nothing here needs a model (lengths in tokens are checked by the caller).
"""

from __future__ import annotations

import csv
import io
import json

from pydantic import BaseModel, ValidationError

from editing.errors import EditingError
from editing.request import EditRequest

MAX_FACTS = 200  # one batch: each fact's v* is optimised in turn (seconds each)
ALIASES = {"new_answer": "target_new", "new answer": "target_new", "target": "target_new", "answer": "target_new",
           "old answer": "target_old", "old_answer": "target_old"}


class FactRow(BaseModel):
    """One row of a corrections file: its fields, the request they make, or why they make none."""

    line: int  # 1-based line of the file (the header is line 1 of a CSV)
    subject: str = ""
    prompt: str = ""
    target_new: str = ""
    question: str | None = None
    target_old: str | None = None
    error: str | None = None

    def request(self) -> EditRequest:
        return EditRequest(prompt=self.prompt, subject=self.subject, target_new=self.target_new,
                           target_true=self.target_old, question=self.question)


def read_facts(text: str, name: str = "") -> list[FactRow]:
    """The rows of a corrections file; ``name`` ending in .jsonl/.json reads JSON Lines, else CSV."""
    text = text.lstrip("\ufeff")
    if name.lower().endswith((".jsonl", ".json")) or text.lstrip().startswith("{"):
        records = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                records.append((line, None, f"not JSON ({exc.msg})"))
                continue
            records.append((line, value, None if isinstance(value, dict) else "not a JSON object"))
    else:
        reader = csv.DictReader(io.StringIO(text))
        records = []
        try:
            for row in reader:  # line_num: where the row ends, blank lines and quoted line breaks counted
                records.append((reader.line_num, row, None))
        except csv.Error as exc:
            raise ValueError(f"not a readable CSV file (line {reader.line_num}: {exc})") from None
    rows = [_row(line, value, error) for line, value, error in records]
    if len(rows) > MAX_FACTS:
        raise ValueError(f"the file has {len(rows)} facts; at most {MAX_FACTS} are imported at once — split it")
    return rows


def _row(line: int, value: dict | None, error: str | None) -> FactRow:
    if error is not None or value is None:
        return FactRow(line=line, error=error)
    fields = {}
    for key, raw in value.items():
        key = ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
        if key in FactRow.model_fields and key not in ("line", "error") and raw is not None:
            fields[key] = str(raw).strip()
    row = FactRow(line=line, **{k: v for k, v in fields.items() if v or k in ("subject", "prompt", "target_new")})
    missing = [k for k in ("subject", "prompt", "target_new") if not getattr(row, k)]
    if missing:
        return row.model_copy(update={"error": f"missing {', '.join(missing)}"})
    try:
        row.request()
    except (ValidationError, EditingError, ValueError) as exc:
        message = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()) \
            if isinstance(exc, ValidationError) else str(exc)
        return row.model_copy(update={"error": message})
    return row
