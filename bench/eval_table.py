"""One table over every evaluation run in ``out/`` (docs/evaluation.md).

    python -m bench.eval_table [--out out] [--ci]
    python -m bench.eval_table --compare out/eval-A out/eval-B

Each ``out/eval-*/cases.jsonl`` gives one row per method and, per (model, data), a "before"
row (the unedited model on the same cases).  Values are means over cases; ``--ci`` adds the
half-width of the 95% confidence interval.  ``--compare`` gives, per metric, the mean
difference B − A over the cases both runs share, with its 95% interval (a paired comparison:
much tighter than comparing the two means when the cases are the same).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

COLUMNS = ["reliability", "generalization", "locality", "same_subject_locality", "portability",
           "efficacy", "paraphrase", "neighborhood", "chat_success"]
SHORT = {"same_subject_locality": "same-subj. loc.", "chat_success": "chat"}


def load_runs(out: Path) -> list[dict]:
    runs = []
    for jsonl in sorted(out.glob("eval-*/cases.jsonl")):
        rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows:
            settings = jsonl.parent / "run.json"
            info = json.loads(settings.read_text(encoding="utf-8")) if settings.exists() else None
            runs.append({"name": jsonl.parent.name, "rows": rows, "info": info})
    return runs


def describe(name: str, info: dict | None = None) -> dict:
    """A run's parts: from its ``run.json`` (written by ``editing.evaluation.runner``) where there is
    one, else from its folder name ``eval-<model>-<data>-<method>[-seq][-L<layer>]``."""
    if info is not None:
        layer = "default" if info.get("layer") in (None, "default") else str(info["layer"])
        return {"model": info["model"], "data": info["data"], "method": info["method"], "layer": layer,
                "sequential": bool(info.get("sequential")), "set": info.get("set") or {}}
    parts = name.removeprefix("eval-").split("-")
    layer = parts.pop()[1:] if parts[-1].startswith("L") else "default"
    sequential = parts[-1] == "seq" and bool(parts.pop())
    method = parts.pop()
    for data in ("zsre-samesubject", "zsre-zh", "counterfact", "cknowedit", "zsre"):
        if "-".join(parts).endswith(data):
            model = "-".join(parts)[: -len(data) - 1]
            return {"model": model, "data": data, "method": method, "layer": layer, "sequential": sequential,
                    "set": {}}
    raise ValueError(f"cannot read run name {name!r}")


def _value(value) -> str:
    return "(" + ", ".join(map(str, value)) + ")" if isinstance(value, (list, tuple)) else str(value)


def cell(values: list, ci: bool) -> str:
    from editing.evaluation.metrics import summarize

    mean, half, n = summarize(values)
    if n == 0 or math.isnan(mean):
        return "–"
    return f"{mean:.2f} ± {half:.2f}" if ci and not math.isnan(half) else f"{mean:.2f}"


def _measured(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def table(runs: list[dict], ci: bool = False) -> str:
    shown = [c for c in COLUMNS if any(_measured(r["metrics"].get(c)) for run in runs for r in run["rows"])]
    head = ["model", "data", "method", "layer", "cases", *[SHORT.get(c, c) for c in shown], "s/edit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    widest: dict[tuple[str, str], list[dict]] = {}  # (model, data) -> the most cases: the "before" row
    for run in runs:
        run["parts"] = describe(run["name"], run.get("info"))
        key = (run["parts"]["model"], run["parts"]["data"])
        if len(run["rows"]) > len(widest.get(key, [])):
            widest[key] = run["rows"]
    for run in sorted(runs, key=lambda r: (r["parts"]["model"], r["parts"]["data"], r["name"])):
        info, rows = run["parts"], run["rows"]
        before = widest.pop((info["model"], info["data"]), None)
        if before is not None:  # once per (model, data), from its run with the most cases
            values = [cell([r["before"].get(c) for r in before], ci) for c in shown]
            lines.append(f"| {info['model']} | {info['data']} | before | – | {len(before)} | "
                         + " | ".join(values) + " | – |")
        seconds = sorted(r["seconds"] for r in rows)[len(rows) // 2]
        values = [cell([r["metrics"].get(c) for r in rows], ci) for c in shown]
        layer = info["layer"] if info["layer"] != "default" else str(rows[0]["layer"])
        method = info["method"].upper() + (" seq." if info["sequential"] else "")
        if info["set"]:  # hyperparameters other than the defaults
            method += " (" + ", ".join(f"{k}={_value(v)}" for k, v in info["set"].items()) + ")"
        lines.append(f"| {info['model']} | {info['data']} | {method} | {layer} | {len(rows)} | "
                     + " | ".join(values) + f" | {seconds:.1f} |")
    return "\n".join(lines)


def compare(first: Path, second: Path) -> str:
    """Paired differences (second − first) per metric over the cases both runs share."""
    from editing.evaluation.metrics import summarize

    def by_case(run: Path) -> dict:
        rows = (json.loads(line) for line in (run / "cases.jsonl").read_text(encoding="utf-8").splitlines() if line)
        return {r["case_id"]: r for r in rows}

    a, b = by_case(first), by_case(second)
    shared = sorted(set(a) & set(b), key=str)
    lines = [f"{second.name} − {first.name}, {len(shared)} shared cases", "",
             "| metric | difference | 95% interval |", "|---|---|---|"]
    for metric in COLUMNS:
        pairs = [(a[i]["metrics"].get(metric), b[i]["metrics"].get(metric)) for i in shared]
        diffs = [y - x for x, y in pairs if _measured(x) and _measured(y)]
        if diffs:
            mean, half, _ = summarize(diffs)
            lines.append(f"| {metric} | {mean:+.3f} | ± {half:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_table")
    parser.add_argument("--out", default="out")
    parser.add_argument("--ci", action="store_true", help="show the 95%% confidence half-widths")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="paired differences B − A")
    args = parser.parse_args()
    if args.compare:
        print(compare(Path(args.compare[0]), Path(args.compare[1])))
        return
    print(table(load_runs(Path(args.out)), args.ci))


if __name__ == "__main__":
    main()
