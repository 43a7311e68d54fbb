"""Evaluate editing methods on CounterFact / zsRE / CKnowEdit (the thesis's Table 3-1).

    python -m editing.evaluate --data counterfact --file ../shared/data/counterfact-dev.json \
        --method rome [--layer N|auto] [--n 100] [--model smollm2] [--no-covariance] \
        [--sequential [--every 10]] [--out DIR]

Each case starts from the unedited weights (the delta is reverted exactly in between) unless
``--sequential``, which keeps edits accumulating and re-measures every earlier edit every k
edits (the lifelong curve: ``editing.evaluation.sequential``).  Results go to
``DIR/cases.jsonl`` (resumable: a killed run continues where it stopped), ``DIR/summary.md``,
``DIR/metrics.png`` or ``DIR/sequential.png``, and ``DIR/run.json`` (the settings).
``touch out/PAUSE`` holds every running evaluation between two cases until it is removed.
``--shard I/N`` runs every N-th case from the I-th (0-based) into the same folder, so N
processes, one thread each, share a run's cases on N cores (single edits only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

METRICS = ["reliability", "generalization", "locality", "same_subject_locality", "portability",
           "efficacy", "paraphrase", "neighborhood", "chat_success", "fluency"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_gpu_mb() -> int | None:
    """Peak GPU memory allocated by torch so far, in MB (None on a CPU-only run)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20)


def _tag(value) -> str:
    """A setting's value as a folder name part: ``[0.9, 0.999]`` -> ``0.9,0.999``."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def run(args, loaded=None) -> Path:
    """Run one evaluation; ``loaded`` reuses an already loaded model (layer sweeps)."""
    from tqdm import tqdm

    from editing.engine import Editor
    from editing.errors import NoKnowledgeNeurons
    from editing.evaluation.data import load_cases
    from editing.evaluation.metrics import case_metrics, chat_success, probe_case
    from editing.hparams import cli_overrides, hparams_for
    from editing.machinery.covariance import Corpus
    from runtime.conversation import Conversation
    from runtime.loader import load_model

    loaded = loaded or load_model(args.model, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    editor = Editor.for_model(loaded, corpus=Corpus(args.corpus))
    conversation = Conversation(loaded)  # chat answers as the product gives them
    cases = _editable(load_cases(args.data, args.file), tok, args.n)
    overrides = cli_overrides(args.method, args.set, args.no_covariance)
    hparams = hparams_for(args.method, overrides)  # fails here, before any work, on an unknown key
    suffix = "".join(f"-{k}{_tag(v)}" for k, v in overrides.items())  # e.g. -covarianceFalse -v_lr0.5
    out = Path(args.out or f"out/eval-{args.model}-{args.data}-{args.method}"
               f"{'-seq' if args.sequential else ''}{f'-L{args.layer}' if args.layer is not None else ''}{suffix}")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": args.model, "data": args.data, "method": args.method, "layer": args.layer,
                "sequential": args.sequential, "set": overrides,
                "command": f"python -m editing.evaluate {args_line(args)}"}
    recorded = out / "run.json"
    if recorded.exists():  # resuming: the cases already there must have been run the same way
        earlier = json.loads(recorded.read_text(encoding="utf-8"))
        changed = [k for k in settings if k != "command" and k in earlier and earlier[k] != settings[k]]
        if changed:
            raise SystemExit(f"{out} holds a run with other settings ({', '.join(changed)}: "
                             f"{', '.join(repr(earlier[k]) for k in changed)}); choose another --out")
    recorded.write_text(json.dumps(settings, indent=1), encoding="utf-8")
    jsonl = out / "cases.jsonl"
    layer = None if args.layer in (None, "default") else args.layer
    if args.sequential:
        return _run_sequential(args, out, editor, conversation, cases, layer, hparams)
    done = {json.loads(line)["case_id"] for line in jsonl.read_text().splitlines()} if jsonl.exists() else set()
    stack = editor.stack
    shard, shards = getattr(args, "shard", None) or (0, 1)
    todo = [c for i, c in enumerate(cases) if i % shards == shard and c.case_id not in done]
    for case in tqdm(todo, desc=f"{args.method} on {args.data}", unit="case"):
        _wait_while_paused(out.parent)
        case_start = time.perf_counter()
        before = probe_case(model, tok, case)
        chat_before = chat_success(case, conversation) if not args.no_chat else None
        fluent = args.fluency and bool(case.generation_prompts)
        fluency_before = _fluency(model, tok, case.generation_prompts) if fluent else None
        metrics_before = case_metrics(before, before)
        metrics_before["chat_success"] = chat_before
        if fluent:
            metrics_before["fluency"] = fluency_before
        start = time.perf_counter()
        try:
            outcome = editor.compute(case.request, args.method, layer if layer != "auto" else "auto", hparams)
        except NoKnowledgeNeurons as refused:  # KN's own failure mode: the case counts, unedited,
            # so the method's means count it as the failure it is instead of dropping it
            _append_row(jsonl, case, None, time.perf_counter() - start, case_start, metrics_before,
                        dict(metrics_before), not_edited=str(refused))
            continue
        seconds = time.perf_counter() - start
        stack.apply(outcome.delta)
        metrics = case_metrics(before, probe_case(model, tok, case))
        metrics["chat_success"] = chat_success(case, conversation) if not args.no_chat else None
        if fluent:
            metrics["fluency"] = _fluency(model, tok, case.generation_prompts)
        _append_row(jsonl, case, outcome, seconds, case_start, metrics_before, metrics)
        stack.revert(outcome.delta.id)  # bit-identical again: the sampled prefixes stay valid
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    write_summary(out, args, rows)
    return out


def _run_sequential(args, out: Path, editor, conversation, cases: list, layer, hparams) -> Path:
    """Edits accumulate; every ``--every`` edits a curve point over all of them (resumable)."""
    from tqdm import tqdm

    from editing.evaluation.sequential import SequentialRun

    if getattr(args, "shard", None) and args.shard[1] > 1:
        raise SystemExit("--shard splits single edits; a --sequential run is one sequence")
    run = SequentialRun(out, editor, conversation, cases, every=args.every, chat_sample=args.chat_sample,
                        fluency_sample=args.fluency_sample, with_chat=not args.no_chat)
    done = run.resume()
    if done:
        print(f"resuming after {len(done)} edits", file=sys.stderr)
    try:
        for case in tqdm(cases[len(done):], desc=f"{args.method} on {args.data}, sequential", unit="edit",
                         initial=len(done), total=len(cases)):
            _wait_while_paused(out.parent)
            run.step(case, args.method, layer, hparams)
    finally:
        editor.stack.revert_all()
    write_sequential_summary(out, args)
    return out


def _fluency(model, tok, prompts: list[str]) -> float:
    """ROME's generation fluency: n-gram entropy of greedy continuations of the first two
    generation prompts (40 tokens each)."""
    from editing.evaluation.metrics import ngram_entropy
    from editing.machinery.probe import greedy_completions

    texts = greedy_completions(model, tok, prompts[:2], 40)
    return float(sum(ngram_entropy(t) for t in texts) / len(texts))


def _editable(cases: list, tok, n: int | None) -> list:
    """The first ``n`` cases the editor accepts: a case whose target or prompt is longer than an
    edit may be (``EditRequest.check_lengths``, in this model's tokens) is left out and counted,
    so ``--n 100`` gives 100 measured cases instead of a run that stops at the first long one."""
    from editing.errors import InvalidEditRequest

    kept, skipped = [], 0
    for case in cases:
        if n is not None and len(kept) == n:
            break
        try:
            case.request.check_lengths(tok)
        except InvalidEditRequest as err:
            skipped += 1
            print(f"skipping {case.case_id}: {err}", file=sys.stderr)
            continue
        kept.append(case)
    if skipped:
        print(f"{skipped} case(s) left out as too long to edit", file=sys.stderr)
    return kept


def _wait_while_paused(folder: Path) -> None:
    """Between cases, wait while ``folder/PAUSE`` exists (``touch out/PAUSE``: free the CPU for a
    while without a pause landing inside a case's timing); ``folder/PAUSED`` says it is waiting."""
    pause, paused = folder / "PAUSE", folder / "PAUSED"
    if not pause.exists():
        return
    paused.write_text(str(os.getpid()), encoding="utf-8")
    try:
        while pause.exists():
            time.sleep(2)
    finally:
        paused.unlink(missing_ok=True)


def _gpu_peak(rows: list[dict]) -> str:
    peaks = [r["peak_gpu_mb"] for r in rows if r.get("peak_gpu_mb") is not None]
    return f" Peak GPU memory {max(peaks)} MB." if peaks else ""


def _wall_time(rows: list[dict]) -> str:
    """Time for the whole run (edits and every probe), from the rows that recorded it."""
    timed = [r["case_seconds"] for r in rows if "case_seconds" in r]
    if not timed:
        return ""
    return (f" Wall time per case (edit + all probes): median {sorted(timed)[len(timed) // 2]:.1f} s; "
            f"{sum(timed) / 60:.1f} min for {len(timed)} cases.")


def args_line(args) -> str:
    """The command line that reproduces ``args`` (also when called from a sweep script)."""
    parts = [f"--data {args.data}", f"--file {args.file}", f"--method {args.method}", f"--model {args.model}"]
    parts += [f"--n {args.n}"] if args.n else []
    parts += [f"--layer {args.layer}"] if args.layer is not None else []
    parts += [f"--set {pair}" for pair in getattr(args, "set", None) or []]
    parts += [flag for flag, on in (("--no-covariance", args.no_covariance), ("--no-chat", args.no_chat),
                                    ("--fluency", args.fluency), ("--sequential", args.sequential)) if on]
    parts += [f"--every {args.every} --chat-sample {args.chat_sample} --fluency-sample {args.fluency_sample}"
              ] if args.sequential else []
    return " ".join(parts)


def _append_row(jsonl: Path, case, outcome, seconds: float, case_start: float, before: dict, after: dict,
                not_edited: str | None = None) -> None:
    """One case's line of ``cases.jsonl``; ``outcome`` is None where the method refused the case
    (``not_edited`` says why) and ``after`` is then the unedited model's metrics."""
    row = {"case_id": case.case_id, "subject": case.request.subject, "target_new": case.request.target_new,
           "layer": outcome.layer if outcome else None, "seconds": round(seconds, 3),
           "stats_seconds": round(outcome.stats_seconds, 1) if outcome else 0.0,
           "case_seconds": round(time.perf_counter() - case_start, 3),  # edit + every probe
           "peak_rss_mb": round(_peak_mb()), "peak_gpu_mb": _peak_gpu_mb(), "metrics": after, "before": before,
           "final_loss": outcome.losses[-1] if outcome and outcome.losses else None}
    if not_edited is not None:
        row["not_edited"] = not_edited
    with jsonl.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_summary(out: Path, args, rows: list[dict]) -> None:
    from editing.evaluation.metrics import summarize

    def cell(key: str, which: str) -> str:
        mean, half, n = summarize([r[which].get(key) for r in rows])
        if n == 0 or math.isnan(mean):
            return "–"
        return f"{mean:.3f} ± {half:.3f}" if not math.isnan(half) else f"{mean:.3f}"

    shown = [m for m in METRICS if any(r["metrics"].get(m) is not None and not
                                       (isinstance(r["metrics"].get(m), float) and math.isnan(r["metrics"][m]))
                                       for r in rows)]
    seconds = sorted(r["seconds"] for r in rows)
    median = seconds[len(seconds) // 2] if seconds else math.nan
    lines = [
        f"# {args.method.upper()} on {args.data} ({len(rows)} cases, model {args.model})",
        "",
        f"Command: `python -m editing.evaluate {args_line(args)}`",
        f"Covariance: {'off (C = I)' if args.no_covariance else 'on'}; layer: "
        f"{args.layer if args.layer is not None else 'model default'}; single edits from the unedited weights.",
        "Values: mean ± half-width of the 95% confidence interval.",
        "",
        "| | " + " | ".join(shown) + " | s/edit (median) |",
        "|---|" + "---|" * (len(shown) + 1),
        "| before | " + " | ".join(cell(m, "before") for m in shown) + " | |",
        f"| {args.method.upper()} | " + " | ".join(cell(m, "metrics") for m in shown) + f" | {median:.2f} |",
        "",
        f"Peak RSS {max(r['peak_rss_mb'] for r in rows)} MB.{_gpu_peak(rows)}{_wall_time(rows)}",
    ]
    refused = sum(1 for r in rows if r.get("not_edited"))
    if refused:
        reason = next(r["not_edited"] for r in rows if r.get("not_edited"))
        lines.append(f"Not edited: {refused} of {len(rows)} cases ({reason.split(';')[0]}); "
                     "they count in the means with the unedited model's values.")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(out, shown, rows, args)
    print("\n".join(lines))


def write_sequential_summary(out: Path, args) -> None:
    """``summary.md`` (the curve as a table) and ``sequential.png`` of a sequential run."""
    from editing.evaluation.sequential import CURVE_METRICS, _read_jsonl

    rows, curve = _read_jsonl(out / "cases.jsonl"), _read_jsonl(out / "curve.jsonl")
    if not rows:
        return
    seconds = sorted(r["seconds"] for r in rows)
    keys = [k for k in CURVE_METRICS if any(k in c for c in curve)]
    lines = [
        f"# {args.method.upper()}, {len(rows)} sequential edits on {args.data} (model {args.model})",
        "",
        f"Command: `python -m editing.evaluate {args_line(args)}`",
        f"Median seconds per edit {seconds[len(seconds) // 2]:.2f}; last edit {rows[-1]['seconds']:.2f} s.",
        "",
        "Every edit applied so far, re-measured every k edits; locality and neighbourhood against the unedited "
        "model; chat on a fixed sample of the run's edits (n applied so far); fluency of greedy generations on a "
        "fixed sample of prompts (unedited model: "
        + (f"{curve[0]['fluency_unedited']:.3f} bits)." if curve and curve[0].get("fluency_unedited") else "–)."),
        "",
        "| edits | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for c in curve:
        cells = [(f"{c[k]:.3f}" + (f" (n={c['chat_n']})" if k == "chat_success" else "")) if k in c else "–"
                 for k in keys]
        lines.append(f"| {c['edits']} | " + " | ".join(cells) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if curve:
        plot_curves({args.method.upper(): curve}, out / "sequential.png",
                    f"{args.method.upper()}, sequential edits on {args.data}, {args.model}")
    print("\n".join(lines))


def plot_curves(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    """One panel per metric, one line per run: the lifelong curves side by side."""
    from matplotlib.figure import Figure

    from editing.evaluation.sequential import CURVE_METRICS

    keys = [k for k in CURVE_METRICS if any(k in c for curve in curves.values() for c in curve)]
    cols = 4
    fig = Figure(figsize=(3.2 * cols, 2.6 * math.ceil(len(keys) / cols) + 0.6))
    axes = fig.subplots(math.ceil(len(keys) / cols), cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for label, curve in curves.items():
            xs = [c["edits"] for c in curve if key in c]
            ax.plot(xs, [c[key] for c in curve if key in c], marker=".", label=label)
            if key == "fluency" and curve and curve[0].get("fluency_unedited"):
                ax.axhline(curve[0]["fluency_unedited"], color="grey", lw=0.8, ls="--")
        ax.set_title(key.replace("_", " "), fontsize=9)
        if key != "fluency":
            ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("edits applied", fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot(out: Path, shown: list[str], rows: list[dict], args) -> None:
    from matplotlib.figure import Figure

    from editing.evaluation.metrics import summarize

    keys = [m for m in shown if m != "fluency"]
    fig = Figure(figsize=(max(6, 1.1 * len(keys)), 3.6))
    ax = fig.subplots()
    width = 0.38
    for offset, which, label in ((-width / 2, "before", "before"), (width / 2, "metrics", args.method.upper())):
        stats = [summarize([r[which].get(k) for r in rows]) for k in keys]
        ax.bar([i + offset for i in range(len(keys))], [s[0] for s in stats], width,
               yerr=[0 if math.isnan(s[1]) else s[1] for s in stats], label=label, capsize=3)
    ax.set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{args.method.upper()} on {args.data}, {args.model} ({len(rows)} cases)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)


def build_parser() -> argparse.ArgumentParser:
    from editing.evaluation.data import DATASETS

    parser = argparse.ArgumentParser(prog="python -m editing.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, choices=DATASETS)
    parser.add_argument("--file", required=True)
    parser.add_argument("--method", default="rome", choices=["rome", "ft", "kn"])
    parser.add_argument("--layer", default=None, type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--corpus", default="self")
    parser.add_argument("--no-covariance", action="store_true")
    parser.add_argument("--no-chat", action="store_true", help="skip chat-level success (faster)")
    parser.add_argument("--fluency", action="store_true", help="also generate for n-gram entropy (slower)")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--every", type=int, default=10, help="--sequential: a curve point every k edits")
    parser.add_argument("--chat-sample", type=int, default=30,
                        help="--sequential: chat success on this many of the run's edits, evenly spaced")
    parser.add_argument("--fluency-sample", type=int, default=24,
                        help="--sequential: generation fluency on this many cases' first generation prompt")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a hyperparameter of the method (editing/hparams.py), e.g. --set v_lr=1.0")
    parser.add_argument("--out", default=None)
    parser.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                        help="run only cases I, I+N, I+2N, ... (0-based), appending to the same folder")
    return parser


def _shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants I/N, e.g. 0/2, not {value!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {value}: I must be in 0..N-1")
    return index, count


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a model hub (set here: importing has no side effects)
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
