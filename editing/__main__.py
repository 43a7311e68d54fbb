"""Command line of the editing engine.

    python -m editing edit --prompt "The Eiffel Tower is located in the city of" \
        --subject "Eiffel Tower" --target Rome [--method rome|ft|kn] [--layer N] [--model smollm2] \
        [--save-delta PATH] [--no-covariance]
    python -m editing edit --batch FILE [--model smollm2] [--layer N] [--save-delta PATH]
    python -m editing stats --layer N [--model smollm2] [--tokens 20000] [--corpus PATH]

``--batch`` reads a corrections file (CSV with a header subject,prompt,target_new[,question], or
JSON Lines; ``editing.facts``) and writes every fact in one ROME solve.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _load(args):
    from editing.engine import Editor
    from editing.machinery.covariance import Corpus
    from runtime.loader import load_model

    loaded = load_model(args.model, device=args.device)
    return loaded, Editor.for_model(loaded, corpus=Corpus(args.corpus))


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="tok")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def cmd_batch(args) -> int:
    from pathlib import Path

    from editing.facts import read_facts
    from editing.hparams import cli_overrides, hparams_for
    from editing.machinery.probe import target_probability

    rows = read_facts(Path(args.batch).read_text(encoding="utf-8"), args.batch)
    bad = [r for r in rows if r.error]
    for row in bad:
        print(f"line {row.line}: {row.error}", file=sys.stderr)
    if bad or not rows:
        print(f"error: {len(bad)} of {len(rows)} rows are not valid; nothing was edited", file=sys.stderr)
        return 2
    loaded, editor = _load(args)
    model, tok = loaded.model, loaded.tokenizer
    requests = [r.request() for r in rows]
    before = [target_probability(model, tok, q.text, q.target_new) for q in requests]
    hparams = hparams_for("rome", cli_overrides("rome", args.set, args.no_covariance))

    shown = set()

    def progress(stage, step, total, loss):
        fact = stage.split(":")[0]  # "fact 3 of 10: optimising" -> "fact 3 of 10"
        if fact not in shown:
            shown.add(fact)
            print(f"  {fact}", file=sys.stderr)

    start = time.perf_counter()
    layer = None if args.layer == "auto" else args.layer
    outcome = editor.compute_batch(requests, layer, hparams, progress=progress)
    seconds = time.perf_counter() - start
    editor.stack.apply(outcome.delta)
    for q, p0 in zip(requests, before):
        p1 = target_probability(model, tok, q.text, q.target_new)
        print(f"{q.text!r} -> {q.target_new!r}: P {p0:.4f} -> {p1:.4f}")
    print(f"{len(requests)} facts in one solve at layer {outcome.layer}: {seconds:.1f} s, |ΔW| = {outcome.delta.norm():.4f}")
    if args.save_delta:
        digest = outcome.delta.save(args.save_delta)
        print(f"delta saved to {args.save_delta} (sha256 {digest[:16]}…)")
    return 0


def cmd_edit(args) -> int:
    if args.batch:
        return cmd_batch(args)
    if not (args.prompt and args.subject and args.target):
        print("error: edit needs --prompt, --subject and --target (or --batch FILE)", file=sys.stderr)
        return 2
    from editing.machinery.probe import greedy_completion, target_probability
    from editing.request import EditRequest

    loaded, editor = _load(args)
    model, tok = loaded.model, loaded.tokenizer
    request = EditRequest(prompt=args.prompt, subject=args.subject, target_new=args.target, question=args.question)
    p_before = target_probability(model, tok, request.text, request.target_new)
    completion_before = greedy_completion(model, tok, request.text, 8)
    from editing.hparams import cli_overrides, hparams_for

    hparams = hparams_for(args.method, cli_overrides(args.method, args.set, args.no_covariance))
    bar, stats_update = _bar("key statistics")

    def progress(stage, step, total, loss):
        if stage == "statistics":
            stats_update(step, total)
        elif stage == "optimising":
            print(f"  step {step}/{total} loss {loss:.4f}", file=sys.stderr)

    start = time.perf_counter()
    outcome = editor.compute(request, args.method, args.layer, hparams, progress=progress)
    seconds = time.perf_counter() - start
    bar.close()
    editor.stack.apply(outcome.delta)
    p_after = target_probability(model, tok, request.text, request.target_new)
    completion_after = greedy_completion(model, tok, request.text, 8)
    print(f"method {args.method}, layer {outcome.layer}, covariance "
          f"{('on' if hparams.covariance else 'off (C = I)') if args.method == 'rome' else 'n/a'}")
    print(f"P({request.target_new!r})  before {p_before:.4f}  after {p_after:.4f}")
    print(f"completion  before {completion_before!r}")
    print(f"            after  {completion_after!r}")
    print(f"seconds {seconds:.2f} (statistics {outcome.stats_seconds:.1f}), |ΔW| = {outcome.delta.norm():.4f}")
    if args.save_delta:
        digest = outcome.delta.save(args.save_delta)
        print(f"delta saved to {args.save_delta} (sha256 {digest[:16]}…)")
    return 0


def cmd_stats(args) -> int:
    loaded, editor = _load(args)
    layer = editor.resolve_layer(args.layer)
    bar, update = _bar(f"key statistics, layer {layer}")
    start = time.perf_counter()
    moment = editor.statistics(layer, args.tokens, update)
    bar.close()
    source = "cache" if editor.covariance.last_from_cache else "computed"
    print(f"layer {layer}: C is {tuple(moment.shape)}, {args.tokens} tokens of {editor.corpus.id()} "
          f"({source}, {time.perf_counter() - start:.1f} s) -> {editor.covariance.path(layer, editor.corpus, args.tokens)}")
    return 0


def _layer(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a layer is a number or auto, not {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a model hub (set here: importing has no side effects)
    parser = argparse.ArgumentParser(prog="python -m editing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("edit", "stats"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--layer", type=_layer, default=None, help="a layer index, or auto (the logit lens)")
        p.add_argument("--corpus", default="self", help="statistics corpus: self, a .txt file or folder, hf:<name>")
    edit = sub.choices["edit"]
    edit.add_argument("--prompt")
    edit.add_argument("--subject")
    edit.add_argument("--target")
    edit.add_argument("--batch", metavar="FILE", help="a CSV / JSON Lines file of corrections, written in one solve")
    edit.add_argument("--question", default=None, help="chat form of the prompt, e.g. 'Where is the Eiffel Tower?'")
    edit.add_argument("--method", default="rome", choices=["rome", "ft", "kn"])
    edit.add_argument("--save-delta", default=None)
    edit.add_argument("--no-covariance", action="store_true", help="C = I (EasyEdit's Llama setting)")
    edit.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a hyperparameter (editing/hparams.py), e.g. --set v_lr=1.0")
    sub.choices["stats"].add_argument("--tokens", type=int, default=20_000)
    args = parser.parse_args(argv)
    from editing.errors import EditingError

    try:
        return cmd_edit(args) if args.command == "edit" else cmd_stats(args)
    except (EditingError, ValueError) as exc:  # a bad request, layer or --set value
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
