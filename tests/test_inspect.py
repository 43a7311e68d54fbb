"""Causal tracing, logit lens and the automatic layer choice."""

from __future__ import annotations

import numpy as np
import pytest

from editing.inspection.lens import LensResult, choose_layer, logit_lens
from editing.inspection.plots import plot_lens, plot_trace, save
from editing.inspection.tracing import causal_trace
from editing.machinery.tokens import subject_span

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"


def test_trace_shapes_and_subject_span(tiny, tokenizer):
    result = causal_trace(tiny, tokenizer, PROMPT, SUBJECT, samples=2, window=2)
    depth = len(result.layers)
    for kind in ("hidden", "mlp", "attn"):
        assert result.scores[kind].shape == (len(result.tokens), depth)
    start, end = result.subject_range
    assert "".join(result.tokens[start:end]).strip() == SUBJECT


def test_restoring_everything_recovers_clean_and_nothing_gives_corrupted(tiny, tokenizer):
    result = causal_trace(tiny, tokenizer, PROMPT, SUBJECT, kinds=("hidden",), samples=2)
    grid = result.scores["hidden"]
    # restoring the last layer's output at the last token restores the whole prediction
    assert grid[-1, -1] == pytest.approx(result.p_clean, rel=1e-4, abs=1e-6)
    # restoring a token before the subject changes nothing: it was never corrupted
    assert grid[0, :] == pytest.approx(np.full(grid.shape[1], result.p_corrupted), rel=1e-4, abs=1e-6)
    # restoring every subject token at layer 0 undoes the corruption entirely... token by token,
    # a restored subject token at the last layer cannot reach the last position any more
    start, end = result.subject_range
    assert grid[start:end, -1] == pytest.approx(np.full(end - start, result.p_corrupted), rel=1e-4, abs=1e-6)


def test_same_seed_same_scores(tiny, tokenizer):
    a = causal_trace(tiny, tokenizer, PROMPT, SUBJECT, kinds=("mlp",), samples=2, seed=3)
    b = causal_trace(tiny, tokenizer, PROMPT, SUBJECT, kinds=("mlp",), samples=2, seed=3)
    assert np.array_equal(a.scores["mlp"], b.scores["mlp"]) and a.p_corrupted == b.p_corrupted


def test_subject_span(tokenizer):
    start, end = subject_span(tokenizer, PROMPT, SUBJECT)
    ids = tokenizer(PROMPT).input_ids
    assert tokenizer.decode(ids[start:end]).strip() == SUBJECT


def test_lens_decodes_what_the_model_says(smollm2):
    """The last layer's lens is the model's own next-token distribution; the automatic layer is
    one where the lens already says what the upper layers keep saying."""
    import torch

    model, tok = smollm2.model, smollm2.tokenizer
    lens = logit_lens(model, tok, PROMPT, target="Rome")
    with torch.no_grad():
        probs = model(tok(PROMPT, return_tensors="pt").input_ids).logits[0, -1].softmax(-1)
    paris = tok(" Paris", add_special_tokens=False).input_ids[0]
    assert lens.answer.strip() == "Paris" and lens.answer_prob[-1] == pytest.approx(float(probs[paris]), rel=1e-4)
    assert lens.target_prob[-1] == pytest.approx(float(probs[tok(" Rome", add_special_tokens=False).input_ids[0]]),
                                                 rel=1e-4)
    layer = choose_layer(lens, fallback=6)
    repeated = lens.top_ids[layer]
    assert lens.top_ids[1:-1].count(repeated) >= 2 and repeated not in lens.top_ids[1:layer]


def test_auto_layer_guards():
    def lens(top_ids):
        n = len(top_ids)
        return LensResult("p", list(range(n)), [str(t) for t in top_ids], top_ids, "a", [0.0] * n, [0] * n)

    # the token repeated most is 7; its first layer inside 1..L-2 is 3 (layer 0 is never chosen)
    assert choose_layer(lens([7, 1, 2, 7, 7, 7, 9, 7]), fallback=2) == 3
    # nothing repeats: fall back
    assert choose_layer(lens([1, 2, 3, 4, 5, 6]), fallback=2) == 2
    # a token only on top at the last layer never makes the last layer the choice
    assert choose_layer(lens([5, 1, 1, 2, 2, 9]), fallback=2) in (1, 3)


def test_plots_render_to_png(tiny, tokenizer, tmp_path):
    result = causal_trace(tiny, tokenizer, PROMPT, SUBJECT, samples=1, window=2)
    save(plot_trace(result, mark_layer=1), tmp_path / "trace.png")
    lens = logit_lens(tiny, tokenizer, PROMPT, target="Rome")
    save(plot_lens(lens, mark_layer=1), tmp_path / "lens.png")
    for name in ("trace.png", "lens.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
