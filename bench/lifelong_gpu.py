"""Lifelong editing at the production model's shape: per-edit time and memory of sequential
ROME edits with the preserving update on a Llama-3-8B-shaped model with random bf16 weights.

    python -m bench.lifelong_gpu [--edits 150] [--tiny]   # bench/gpu.sh runs it on a lent GPU

Random weights learn no facts, but every tensor an edit touches has the production shape
(hidden 4096, d_ff 14,336, 32 layers), so the seconds and bytes are the product's.  The edits
run for real (k*, v* optimisation, the solve with the growing history); the solve alone is then
timed with a history of up to 5,000 keys, which is what decides how the cost grows over months.
``--tiny`` runs the same code on a small random llama on the CPU (the test of this script).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact-seq.json"
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512)


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from editing.engine import Editor
    from editing.evaluation.data import load_cases
    from editing.machinery.preservation import PreservedKeys, solve_write
    from runtime.loader import converted_dir

    parser = argparse.ArgumentParser(prog="python -m bench.lifelong_gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=150)
    parser.add_argument("--tiny", action="store_true", help="a small random llama on the CPU (a smoke test)")
    parser.add_argument("--stats-tokens", type=int, default=20_000)
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer folder (default: the converted smollm2 one under AMEND_HOME)")
    args = parser.parse_args(argv)

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    # a tokenizer that ships with the built-in model (no hub); its vocabulary sizes the model
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or converted_dir("smollm2"))
    config = LlamaConfig(vocab_size=len(tokenizer), **(TINY if args.tiny else LLAMA3_8B))
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval().requires_grad_(False)
    build_s = time.perf_counter() - start
    layer = 1 if args.tiny else 5
    editor = Editor(model, tokenizer, stats_dir=Path(tempfile.mkdtemp(prefix="amend-gpu-stats-")), default_layer=layer)
    hparams = {"history_weight": 1.0, "mom2_n_tokens": 2000 if args.tiny else args.stats_tokens,
               "n_prefixes": 2 if args.tiny else 10, "chat_template": False}
    start = time.perf_counter()
    editor.statistics(layer, hparams["mom2_n_tokens"])
    stats_s = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cases = load_cases("counterfact", DATA, args.edits)
    times = []
    for case in cases:
        t0 = time.perf_counter()
        outcome = editor.compute(case.request, "rome", layer, hparams)
        editor.stack.apply(outcome.delta)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak_mb = round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None

    # the solve alone, with a longer history: what grows with months of edits
    moment = editor.statistics(layer, hparams["mom2_n_tokens"])
    d_in = moment.shape[0]
    key, residual = torch.randn(1, d_in, device=moment.device), torch.randn(1, config.hidden_size, device=moment.device)
    solve_s = {}
    for n in (0, 1000, 5000):
        history = torch.randn(n, d_in, device=moment.device) if n else None
        t0 = time.perf_counter()
        solve_write(PreservedKeys(moment, history=history, history_weight=1.0), key, residual)
        if device == "cuda":
            torch.cuda.synchronize()
        solve_s[n] = round(time.perf_counter() - t0, 3)
    history_bytes_per_edit = d_in * 4  # one float32 key per edit and layer, kept in its delta file
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
        "shape": "tiny" if args.tiny else "llama3-8b", "layer": layer, "d_ff": d_in, "edits": len(times),
        "model_build_s": round(build_s, 1), "statistics_s": round(stats_s, 1),
        "first_10_median_s": round(statistics.median(times[:10]), 2),
        "last_10_median_s": round(statistics.median(times[-10:]), 2),
        "median_s": round(statistics.median(times), 2), "peak_gpu_mb": peak_mb,
        "solve_s_by_history": solve_s, "history_kb_per_edit": round(history_bytes_per_edit / 1024, 1),
        "history_mb_at_1000": round(1000 * history_bytes_per_edit / 2**20, 1),
        "solve_matrix_mb": round(d_in * d_in * 8 / 2**20),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
