"""The lifelong curves of several sequential runs of one model side by side, in one figure.

    python -m bench.lifelong_plot --title "smollm2, CounterFact" --out docs/img/lifelong-smollm2.png \
        "preserving r-ROME=out/seq-smollm2-rome" "r-ROME=out/seq-smollm2-rome-plain" "FT=out/seq-smollm2-ft"

Each run folder is one of ``python -m editing.evaluate --sequential`` (its ``curve.jsonl``); the
figure has one panel per metric and one line per run, and a table of the last common point is
printed (markdown).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from editing.evaluation.runner import plot_curves
    from editing.evaluation.sequential import CURVE_METRICS

    parser = argparse.ArgumentParser(prog="python -m bench.lifelong_plot", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=DIR")
    parser.add_argument("--title", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    curves = {}
    for item in args.runs:
        label, _, folder = item.partition("=")
        path = Path(folder) / "curve.jsonl"
        curves[label] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    plot_curves(curves, Path(args.out), args.title)
    keys = [k for k in CURVE_METRICS if any(k in p for c in curves.values() for p in c)]
    print("| run | edits | " + " | ".join(k.replace("_", " ") for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for label, curve in curves.items():
        for point in curve:
            cells = [f"{point[k]:.3f}" if k in point else "–" for k in keys]
            print(f"| {label} | {point['edits']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
