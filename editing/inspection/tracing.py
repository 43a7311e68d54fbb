"""Causal tracing (Meng et al., 2022, §2.1): where does the model keep a fact?

1. clean run: P_clean(o) for the answer token o;
2. corrupted runs: Gaussian noise with σ = 3 × the std of the token embeddings is added to the
   subject's embeddings (several seeded samples, averaged): P_corrupted(o);
3. corrupted-with-restoration: one (token, layer) state is set back to its clean value.
   Indirect effect = P_restored(o) − P_corrupted(o).
Kinds: the residual stream (a layer's output), MLP outputs and attention outputs; MLP and
attention restore a window of ``window`` layers centred on the layer, as in the paper.

Batched: for each layer, every token's restoration (× noise samples) runs in one forward pass.
This module computes; ``editing.inspection.plots`` draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.machinery.forward import PassChecks, UpperStack, final_logits, last_hidden
from editing.machinery.hooks import TraceDict
from editing.machinery.tokens import encode, subject_span
from editing.request import continuation
from editing.spec import ModelSpec, spec_for

KINDS = ("hidden", "mlp", "attn")


@dataclass
class TraceResult:
    prompt: str
    tokens: list[str]
    subject_range: tuple[int, int]  # [start, end) token indices of the subject
    layers: list[int]
    answer: str
    p_clean: float
    p_corrupted: float
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (tokens, layers) P_restored
    noise_scale: float = 0.0
    samples: int = 0

    def effect(self, kind: str) -> np.ndarray:
        """Indirect effect per (token, layer)."""
        return self.scores[kind] - self.p_corrupted


@torch.no_grad()
def causal_trace(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    subject: str,
    target: str | None = None,
    *,
    kinds: tuple[str, ...] = KINDS,
    samples: int = 3,
    window: int = 10,
    noise_factor: float = 3.0,
    seed: int = 0,
    spec: ModelSpec | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    checks: PassChecks | None = None,
) -> TraceResult:
    spec = spec or spec_for(model)
    device = next(model.parameters()).device
    depth = len(model.get_submodule(spec.layers))
    ids = encode(tokenizer, prompt)
    n_tok = len(ids)
    start, end = subject_span(tokenizer, prompt, subject)
    x = torch.tensor([ids], device=device)

    def last_probs(input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token distribution at the last position: (batch, vocab).  The vocabulary
        projection runs on that position only."""
        hidden = last_hidden(model, spec, input_ids=input_ids, use_cache=False)[:, -1]
        return final_logits(model, spec, hidden).float().softmax(-1)

    # -- clean run: the answer, and every state we may restore
    paths = {"hidden": [spec.layer(i) for i in range(depth)], "mlp": [spec.mlp_at(i) for i in range(depth)],
             "attn": [spec.attn_at(i) for i in range(depth)]}
    all_paths = [p for k in kinds for p in paths[k]]
    with TraceDict(model, all_paths) as clean_trace:
        clean_probs = last_probs(x)
    clean = {p: clean_trace[p].output[0] for p in all_paths}  # (tokens, d)
    if target:
        answer_id = tokenizer(continuation(prompt, target), add_special_tokens=False).input_ids[0]
    else:
        answer_id = int(clean_probs[0].argmax())
    p_clean = float(clean_probs[0, answer_id])

    # -- the noise: σ = noise_factor × std of the token embedding matrix, fixed per sample
    embed = model.get_submodule(spec.embed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # σ of what the embedding module outputs (Gemma scales its embeddings by √d inside the module)
    vocab = embed.weight.shape[0]
    sample_ids = torch.arange(0, vocab, max(1, vocab // 4096), device=device)
    scale = noise_factor * float(embed(sample_ids).float().std())
    d_model = embed.weight.shape[1]
    noise = torch.randn(samples, end - start, d_model, generator=generator).to(device) * scale

    def corrupt(output: torch.Tensor) -> torch.Tensor:
        # embeddings (rows, tokens, d); rows = restorations × samples, sample = row % samples
        output = output.clone()
        output[:, start:end] += noise.repeat(output.shape[0] // samples, 1, 1).to(output.dtype)
        return output

    with TraceDict(model, [spec.embed], edit_output=lambda output, _path: corrupt(output)):
        corrupted = last_probs(x.repeat(samples, 1))
    p_corrupted = float(corrupted[:, answer_id].mean())

    scores: dict[str, np.ndarray] = {}
    total = len(kinds) * depth
    batch = x.repeat(n_tok * samples, 1)  # row r restores token r // samples
    token_of_row = torch.arange(n_tok * samples, device=device) // samples
    rows = torch.arange(n_tok * samples, device=device)
    # Record the corrupted pass once; each restoration then replays only the layers from the
    # first restored one upward (nothing below it differs from the corrupted run).
    with TraceDict(model, [spec.embed], edit_output=lambda output, _path: corrupt(output)):
        stack = UpperStack(model, spec, 0, {"input_ids": batch, "attention_mask": torch.ones_like(batch)},
                           checks=checks)

    def restored_probs(first: int) -> torch.Tensor:
        """Next-token distribution of every row, the restoration hooks being installed."""
        if stack.fast:
            return final_logits(model, spec, stack.replay_from(first, stack.input_of(first))[:, -1]).float().softmax(-1)
        with TraceDict(model, [spec.embed], edit_output=lambda output, _path: corrupt(output)):
            return last_probs(batch)

    def restore(output: torch.Tensor, path: str) -> torch.Tensor:
        output = output.clone()
        output[rows, token_of_row] = clean[path][token_of_row].to(output.dtype)
        return output

    for k_index, kind in enumerate(kinds):
        grid = np.zeros((n_tok, depth))
        for layer in range(depth):
            if kind == "hidden":
                first, restored_paths = layer, [spec.layer(layer)]
            else:
                first = max(0, layer - window // 2)
                last = min(depth, layer - window // 2 + window)  # the window is centred on the layer
                restored_paths = [paths[kind][j] for j in range(first, last)]
            with TraceDict(model, restored_paths, edit_output=restore, retain_output=False):
                probs = restored_probs(first)
            grid[:, layer] = probs[:, answer_id].reshape(n_tok, samples).mean(-1).cpu().numpy()
            if progress:
                progress(kind, k_index * depth + layer + 1, total)
        scores[kind] = grid
    return TraceResult(
        prompt=prompt,
        tokens=[tokenizer.decode([t]) for t in ids],
        subject_range=(start, end),
        layers=list(range(depth)),
        answer=tokenizer.decode([answer_id]),
        p_clean=p_clean,
        p_corrupted=p_corrupted,
        scores=scores,
        noise_scale=scale,
        samples=samples,
    )
