"""Seconds per edit on this machine: ROME and FT on both built-in models.

Median over the first N counterfact-dev cases (statistics excluded: they are computed once
per layer and cached; their time is reported apart), plus peak RSS.  Each model runs in its
own process.  With a CUDA GPU, ``--gpu`` times ROME on a Llama-3-8B-shaped model with random
bf16 weights (timing depends on shapes, not values).

    python -m bench.edit_speed [--n 10] [--fresh-stats] [--methods rome,ft,kn] [--models smollm2,gemma3-270m]
                               (--fresh-stats: time statistics from scratch)
    python -m bench.edit_speed --gpu
    python -m bench.edit_speed --history   (the preserving solve's cost against the number of earlier edits)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "counterfact-dev.json"
KN_CASES = 5  # a KN edit takes 20-50 s on this CPU (its integrated gradients over every layer)


def measure(alias: str, n: int, fresh_stats: bool = False, methods: tuple[str, ...] = ("rome", "ft", "kn")) -> dict:
    import tempfile

    from bench.common import peak_rss_mb
    from editing.engine import Editor
    from editing.errors import NoKnowledgeNeurons
    from editing.evaluation.data import load_cases
    from runtime.loader import load_model

    loaded = load_model(alias, device="cpu")
    # --fresh-stats: an empty statistics folder, so the corpus is sampled and C computed anew
    home = Path(tempfile.mkdtemp(prefix="amend-stats-")) if fresh_stats else None
    editor = Editor.for_model(loaded, home=home)
    start = time.perf_counter()
    editor.statistics(editor.default_layer, 20_000)
    stats_s = time.perf_counter() - start
    cases = load_cases("counterfact", DATA, n)
    stack = editor.stack
    editor.templates("en", 10, (5, 10))  # sampled once per model; not part of an edit
    result = {"model": alias, "layer": editor.default_layer, "statistics_s": round(stats_s, 1),
              "statistics_cached": editor.covariance.last_from_cache}
    for method in methods:
        times, probs, steps, parts = [], [], [], []
        refused = 0
        for case in cases[:KN_CASES] if method == "kn" else cases:
            t0 = time.perf_counter()
            try:
                outcome = editor.compute(case.request, method)
            except NoKnowledgeNeurons:  # KN's own failure: it took the whole attribution to find out
                times.append(time.perf_counter() - t0)
                refused += 1
                continue
            times.append(time.perf_counter() - t0)
            probs.append(outcome.target_prob)
            steps.append(len(outcome.losses))
            parts.append(outcome.delta.meta.get("seconds_by_part", {}))
            stack.apply(outcome.delta)
            stack.revert(outcome.delta.id)
        if refused:
            result[f"{method}_refused"] = refused
        result[f"{method}_median_s"] = round(statistics.median(times), 2)
        result[f"{method}_max_s"] = round(max(times), 2)
        if probs and method != "kn":  # KN has no optimisation steps
            result[f"{method}_median_steps"] = statistics.median(steps)
        if probs:  # ROME, FT: on their optimisation rows; KN: on the bare prompt, first token
            result[f"{method}_mean_target_prob"] = round(statistics.mean(probs), 3)
        for part in parts[0] if parts and parts[0] else ():  # where KN's time goes
            result[f"{method}_{part}_median_s"] = round(statistics.median(p[part] for p in parts), 2)
    result["peak_rss_mb"] = round(peak_rss_mb())
    if fresh_stats:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return result


def gpu() -> dict:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from editing.engine import Editor
    from editing.request import EditRequest

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval().requires_grad_(False)
    words = ["The", "Eiffel", "Tower", "is", "located", "in", "the", "city", "of", "Rome", "Paris", "a", "."]
    vocab = {w: i for i, w in enumerate(["<unk>", *words])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<unk>", eos_token=".")
    editor = Editor(model, tok, stats_dir="/tmp/amend-gpu-stats", default_layer=5)
    editor._templates[("en", 10, (5, 10))] = ["{}"] + ["The city of Paris is a . {}"] * 10
    request = EditRequest(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
    times = []
    for _ in range(4):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        editor.compute(request, "rome", 5, {"covariance": False, "chat_template": False, "stop_loss": 0.0})
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"model": "llama3-8b-shaped (random bf16)", "gpu": torch.cuda.get_device_name(),
            "rome_s_per_edit_25_steps": round(statistics.median(times[1:]), 2)}


def history_cost(widths: tuple[int, ...] = (1536, 2048), earlier: tuple[int, ...] = (0, 100, 1000)) -> list[dict]:
    """Milliseconds of the preserving solve (A = C₀ + λ Σ kᵢkᵢᵀ, then Δ) for one edit, against the
    number of earlier edits' keys, at the key widths of smollm2 (1536) and gemma3-270m (2048):
    the only part of an edit the history adds to.  Random keys: the time depends on shapes only."""
    import torch

    from editing.machinery.preservation import PreservedKeys, solve_write

    rows = []
    for width in widths:
        moment = torch.randn(width, width)
        moment = moment @ moment.T / width
        row: dict = {"d_in": width, "history_MB_per_1000_edits": round(1000 * width * 4 / 2**20, 1),
                     "A_float64_MB": round(width * width * 8 / 2**20, 1)}
        for n in earlier:
            preserved = PreservedKeys(moment, torch.randn(n, width) if n else None, 1.0)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                solve_write(preserved, torch.randn(1, width), torch.randn(1, 576))
                times.append(time.perf_counter() - t0)
            row[f"solve_ms_{n}_earlier"] = round(1000 * statistics.median(times), 1)
        rows.append(row)
    return rows


def _methods(args: list[str]) -> tuple[str, ...]:
    return tuple(args[args.index("--methods") + 1].split(",")) if "--methods" in args else ("rome", "ft", "kn")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--history"]:
        from bench.common import markdown_table

        rows = history_cost()
        print(markdown_table(rows, list(rows[0])))
        return
    if args[:1] == ["--measure"]:
        print(json.dumps(measure(args[1], int(args[2]), "--fresh-stats" in args, _methods(args))))
        return
    if args[:1] == ["--gpu"]:
        print(json.dumps(gpu()))
        return
    from bench.common import markdown_table, run_child

    n = int(args[args.index("--n") + 1]) if "--n" in args else 10
    fresh = ["--fresh-stats"] if "--fresh-stats" in args else []
    methods = ["--methods", ",".join(_methods(args))]
    models = args[args.index("--models") + 1].split(",") if "--models" in args else ["smollm2", "gemma3-270m"]
    rows = [run_child("bench.edit_speed", "--measure", alias, str(n), *fresh, *methods) for alias in models]
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
