"""Chat speed of the built-in models on this machine.

For each model, in its own process: first conversion (GGUF -> safetensors, in a fresh
AMEND_HOME), cached start to ready, first-token latency and tokens/s at batch 1 through the
streaming chat agent, the same with plain ``generate`` (the streaming overhead), peak RSS.

    python -m bench.chat_speed            # both models, prints a Markdown table
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

QUESTION = "Tell me about the history of Paris in a few sentences."
NEW_TOKENS = 64


def measure(alias: str) -> dict:
    import torch

    from agents.chat import ChatAgent, GenerationSettings
    from bench.common import peak_rss_mb
    from runtime.loader import load_model

    torch.manual_seed(0)
    start = time.perf_counter()
    loaded = load_model(alias, device="cpu")
    start_s = time.perf_counter() - start
    agent = ChatAgent(loaded)
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS)
    agent.answer([], "Hi", GenerationSettings(max_new_tokens=4))  # warm-up
    # streaming: first visible text and total tokens
    generated = {}
    plain_generate = loaded.model.generate

    def counting_generate(*args, **kwargs):
        out = plain_generate(*args, **kwargs)
        generated["n"] = out.shape[1] - kwargs["input_ids"].shape[1]
        return out

    loaded.model.generate = counting_generate
    t0 = time.perf_counter()
    first = None
    text = ""
    for text in agent.stream([], QUESTION, settings):
        if first is None and text:
            first = time.perf_counter() - t0
    stream_s = time.perf_counter() - t0
    loaded.model.generate = plain_generate
    # tokens generated, including a few-shot stop string and the token or two before it is seen
    n_stream = generated["n"]
    n_shown = len(loaded.tokenizer(text, add_special_tokens=False).input_ids)
    # plain generate of the same prompt and length, no streamer, no stop rules
    prepared = agent.prepare([], QUESTION, NEW_TOKENS)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=prepared.input_ids, attention_mask=torch.ones_like(prepared.input_ids),
                                    max_new_tokens=n_stream, min_new_tokens=n_stream, do_sample=False,
                                    temperature=None, top_p=None, top_k=None,
                                    pad_token_id=loaded.eos_token_ids[0])
    plain_s = time.perf_counter() - t0
    n_plain = out.shape[1] - prepared.input_ids.shape[1]
    return {
        "model": alias,
        "cached_start_s": round(start_s, 2),
        "first_token_s": round(first or 0.0, 3),
        "stream_tokens_per_s": round(n_stream / stream_s, 2),
        "plain_tokens_per_s": round(n_plain / plain_s, 2),
        "streaming_overhead_pct": round(100 * ((stream_s / n_stream) / (plain_s / n_plain) - 1), 1),
        "tokens_after_stop": n_stream - n_shown,
        "peak_rss_mb": round(peak_rss_mb()),
    }


def convert(alias: str) -> dict:
    from runtime.loader import convert_builtin
    from runtime.profiles import BUILTIN_PROFILES

    start = time.perf_counter()
    convert_builtin(BUILTIN_PROFILES[alias])
    return {"model": alias, "conversion_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] in ("--measure", "--convert"):
        fn = measure if sys.argv[1] == "--measure" else convert
        print(json.dumps(fn(sys.argv[2])))
        return
    from bench.common import markdown_table, run_child

    rows = []
    for alias in ("smollm2", "gemma3-270m"):
        with tempfile.TemporaryDirectory() as home:
            conv = run_child("bench.chat_speed", "--convert", alias, env={"AMEND_HOME": home})
        row = run_child("bench.chat_speed", "--measure", alias)
        rows.append({**conv, **row})
        print(json.dumps(rows[-1]), file=sys.stderr)
    keys = ["model", "conversion_s", "cached_start_s", "first_token_s", "stream_tokens_per_s", "plain_tokens_per_s",
            "streaming_overhead_pct", "tokens_after_stop", "peak_rss_mb"]
    print(markdown_table(rows, keys))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
