"""Edit at each of several layers: efficacy, generalisation, neighbourhood and chat-answer
change on the first N counterfact-dev cases — how the built-in models' default layers were chosen.

    python -m bench.layer_sweep --model smollm2 --layers 2 4 6 8 10 12 --n 10
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "counterfact-dev.json"
KEYS = ("efficacy", "paraphrase", "neighborhood", "reliability", "generalization", "locality", "chat_success")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layers", type=int, nargs="+", required=True)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--method", default="rome")
    parser.add_argument("--out", default="out/sweep")
    args = parser.parse_args()

    from bench.common import markdown_table
    from editing.evaluation.metrics import summarize
    from editing.evaluation.runner import build_parser, run
    from runtime.loader import load_model

    loaded = load_model(args.model, device="cpu")
    table = []
    for layer in args.layers:
        out = Path(args.out) / f"{args.model}-{args.method}-L{layer}"
        eval_args = build_parser().parse_args(["--data", "counterfact", "--file", str(DATA), "--method", args.method,
                                               "--model", args.model, "--n", str(args.n), "--layer", str(layer),
                                               "--out", str(out)])
        run(eval_args, loaded)
        rows = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
        means = {k: summarize([r["metrics"].get(k) for r in rows])[0] for k in KEYS}
        seconds = sorted(r["seconds"] for r in rows)[len(rows) // 2]
        table.append({"layer": layer, **{k: round(v, 3) for k, v in means.items()}, "s_per_edit": seconds})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.model}-{args.method}.json").write_text(json.dumps(table, indent=2))
    print(markdown_table(table, ["layer", *KEYS, "s_per_edit"]))
    plot(table, Path(args.out) / f"{args.model}-{args.method}.png", args.model)


def plot(table, path: Path, model: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    for key in ("efficacy", "paraphrase", "neighborhood", "chat_success"):
        ax.plot([r["layer"] for r in table], [r[key] for r in table], marker="o", label=key)
    ax.set_xlabel("edit layer")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"ROME per layer, {model}, counterfact-dev")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
