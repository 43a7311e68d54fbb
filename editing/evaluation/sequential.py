"""Sequential editing: edits accumulate as in the product, and every k edits the whole history
is re-measured — the lifelong curve (``python -m editing.evaluate --sequential``).

At each point, over every edit applied so far: efficacy, paraphrase, neighbourhood (CounterFact's
probability comparisons), reliability, generalization, locality against the *unedited* model;
generation fluency (ROME's n-gram entropy, greedy, 40 tokens) on a fixed sample of generation
prompts, next to the unedited model's; and chat-level success on a fixed sample of the run's
edits (those applied so far), through the product's own chat path (``runtime.conversation``).

A run resumes after a kill: every delta is saved under ``DIR/deltas`` as it is applied, each
case's row and each curve point are appended to ``DIR/cases.jsonl`` / ``DIR/curve.jsonl``; a
restart replays the saved deltas in order (the unedited probes are measured first) and goes on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

CURVE_METRICS = ["efficacy", "paraphrase", "neighborhood", "locality", "reliability", "generalization",
                 "chat_success", "fluency"]


def evenly_spaced(items: list, n: int) -> list:
    """``n`` items spread over ``items`` (all of them when there are fewer)."""
    if n <= 0:
        return []
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else [items[0]]


class SequentialRun:
    """One sequence of edits into ``out``; ``resume()`` then ``step(case)`` per case."""

    def __init__(self, out: Path, editor, conversation, cases: list, *, every: int, chat_sample: int,
                 fluency_sample: int, with_chat: bool) -> None:
        self.out, self.editor, self.conversation = out, editor, conversation
        self.model, self.tok = editor.model, editor.tokenizer
        self.cases = cases
        self.every = every
        self.deltas_dir = out / "deltas"
        self.deltas_dir.mkdir(parents=True, exist_ok=True)
        self.chat_cases = {c.case_id for c in evenly_spaced(cases, chat_sample)} if with_chat else set()
        self.fluency_prompts = [c.generation_prompts[0] for c in evenly_spaced(
            [c for c in cases if c.generation_prompts], fluency_sample)]
        self.applied: list = []
        self.unedited: dict = {}
        self.fluency_unedited: float | None = None

    # -- resuming -----------------------------------------------------------------------------

    def resume(self) -> list[dict]:
        """Probe the unedited model, then replay the deltas of the rows already done; returns them."""
        from tqdm import tqdm

        from editing.delta import WeightDelta
        from editing.evaluation.metrics import probe_case

        if len(self.editor.stack):
            raise RuntimeError("a sequential run starts from the unedited weights")
        self.unedited = {c.case_id: probe_case(self.model, self.tok, c)
                         for c in tqdm(self.cases, desc="unedited probes", unit="case")}
        if self.fluency_prompts:
            self.fluency_unedited = self.fluency()
        rows = _read_jsonl(self.out / "cases.jsonl")
        by_id = {c.case_id: c for c in self.cases}
        kept = []
        for row in tqdm(rows, desc="replaying", unit="edit"):
            path = self.deltas_dir / row.get("delta", "")
            if row["case_id"] not in by_id or not path.is_file():
                break  # the rest was written after a delta that never reached the disk
            self.editor.stack.apply(WeightDelta.load(path))
            self.applied.append(by_id[row["case_id"]])
            kept.append(row)
        if len(kept) < len(rows):  # drop rows beyond what could be replayed (and their points)
            _write_jsonl(self.out / "cases.jsonl", kept)
        points = [p for p in _read_jsonl(self.out / "curve.jsonl") if p["edits"] <= len(kept)]
        _write_jsonl(self.out / "curve.jsonl", points)
        self.editor.invalidate()
        return kept

    # -- one edit -----------------------------------------------------------------------------

    def step(self, case, method: str, layer, hparams) -> dict:
        """Edit, apply, save the delta, probe the case itself; every ``every`` edits a curve point."""
        from editing.evaluation.metrics import case_metrics, probe_case

        start = time.perf_counter()
        outcome = self.editor.compute(case.request, method, layer, hparams)
        seconds = time.perf_counter() - start
        name = f"{len(self.applied):05d}-{outcome.delta.id}.safetensors"
        outcome.delta.save(self.deltas_dir / name)
        self.editor.stack.apply(outcome.delta)
        self.editor.invalidate()
        self.applied.append(case)
        metrics = case_metrics(self.unedited[case.case_id], probe_case(self.model, self.tok, case))
        row = {"case_id": case.case_id, "subject": case.request.subject, "target_new": case.request.target_new,
               "layer": outcome.layer, "seconds": round(seconds, 3), "stats_seconds": round(outcome.stats_seconds, 1),
               "delta": name, "delta_norm": round(outcome.delta.norm(), 4), "metrics": metrics,
               "final_loss": outcome.losses[-1] if outcome.losses else None}
        _append_jsonl(self.out / "cases.jsonl", row)
        if len(self.applied) % self.every == 0 or len(self.applied) == len(self.cases):
            _append_jsonl(self.out / "curve.jsonl", self.point())
        return row

    # -- a curve point ------------------------------------------------------------------------

    def point(self) -> dict:
        """Every metric of every edit applied so far, each against the unedited model's probes."""
        from editing.evaluation.metrics import case_metrics, chat_success, probe_case, summarize

        start = time.perf_counter()
        per_case = [case_metrics(self.unedited[c.case_id], probe_case(self.model, self.tok, c)) for c in self.applied]
        point: dict = {"edits": len(self.applied)}
        for key in CURVE_METRICS[:6]:
            mean, _, n = summarize([m.get(key) for m in per_case])
            if n:
                point[key] = mean
        sampled = [c for c in self.applied if c.case_id in self.chat_cases]
        if sampled:
            point["chat_success"] = summarize([chat_success(c, self.conversation) for c in sampled])[0]
            point["chat_n"] = len(sampled)
        if self.fluency_prompts:
            point["fluency"] = self.fluency()
            point["fluency_unedited"] = self.fluency_unedited
        point["seconds"] = round(time.perf_counter() - start, 1)
        return point

    def fluency(self) -> float:
        from editing.evaluation.metrics import ngram_entropy
        from editing.machinery.probe import greedy_completions

        texts = []
        for i in range(0, len(self.fluency_prompts), 8):
            texts += greedy_completions(self.model, self.tok, self.fluency_prompts[i:i + 8], 40)
        return float(sum(ngram_entropy(t) for t in texts) / len(texts))


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill, and nothing after it
    return rows


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
