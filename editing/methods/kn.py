"""KN: knowledge neurons (Dai et al., ACL 2022, "Knowledge Neurons in Pretrained Transformers").

An FFN's intermediate activations w^(l) (the input of its output projection W_out, Amend's
"keys") are neurons; each neuron i writes its value slot W_out[:, i] into the residual stream.
For a fact whose prompt x predicts y*, a neuron's attribution is its integrated gradient
(the paper's eq. 3), from the baseline w_i = 0 to its value w̄_i, by a Riemann sum of m steps:

    Attr(w_i^(l)) = w̄_i ∫₀¹ ∂P_x(α w̄^(l)) / ∂w_i dα  ≈  (w̄_i / m) Σ_{k=1..m} ∂P_x((k/m) w̄^(l)) / ∂w_i

where P_x(ŵ^(l)) is P(y* | x) with layer l's activations at the prompt's last position set to ŵ
(the position that predicts the object; one layer scaled at a time, every neuron of it at once).
Knowledge neurons are refined over several prompts of the fact (§3.3): on each prompt keep the
neurons whose attribution is at least t · max (t = 0.2), then keep those kept on at least a share
p of the prompts (p = 0.7, moved by 0.05 at most six times until 2–5 neurons remain, as the
paper's code does).  The fact is updated (§5.1) by rewriting each knowledge neuron's value slot:

    W_out[:, i]  ←  W_out[:, i]  −  λ₁ ‖W_out[:, i]‖ ê(y_old)  +  λ₂ ‖W_out[:, i]‖ ê(y_new)

with ê a token's unit output embedding (the unembedding row: for the tied models the paper used,
the word embedding), λ₁ = 1 and λ₂ = 8 (the paper's settings).  Only the object's first token
is attributed and written: the paper's objects are single tokens.

The prompts are Amend's usual rows of an edit: the bare prompt, prefixes sampled from the model,
and the chat form.  Each attribution pass runs only the prompt's last token, the rest held in a
key/value cache, because scaling the last position changes nothing before it; the m scaled copies
of every layer in a chunk of layers run as one batch, and only through the layers from the
chunk's lowest one up (``UpperStack``'s replay: nothing below a scaled layer changes), which
roughly halves the work of a deep model; the batch's α = 1 rows must reproduce the clean pass,
or full passes are used.  The function returns a compound
``WeightDelta`` (one low-rank part per layer with knowledge neurons: U the slot changes, V one-hot
rows) and leaves the model bit-identical.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from editing.delta import WeightDelta
from editing.errors import NoKnowledgeNeurons
from editing.hparams import KNHyperParams
from editing.machinery.forward import UpperStack, final_logits, last_hidden, same_result
from editing.machinery.hooks import Hooks, hook_input
from editing.machinery.objective import ProgressFn
from editing.machinery.relations import other_subject_prompts
from editing.machinery.rows import DEFAULT_QUESTION, ChatPromptFn
from editing.machinery.tokens import encode
from editing.request import EditRequest
from editing.spec import ModelSpec, n_layers


@dataclass
class KNResult:
    delta: WeightDelta
    neurons: list[tuple[int, int]]  # (layer, neuron)
    scores: torch.Tensor  # (prompts, layers, d_ff) attributions
    target_prob: float = 0.0  # P(new first token) on the bare prompt once the slots are rewritten
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)


@torch.no_grad()
def _prefix_cache(model: nn.Module, ids: list[int], device) -> DynamicCache | None:
    """Keys and values of every token but the last (plain layers: a prompt is shorter than any
    sliding window, and the last token must see all of it)."""
    if len(ids) < 2:
        return None
    cache = DynamicCache()
    model.base_model(input_ids=torch.tensor([ids[:-1]], device=device), past_key_values=cache, use_cache=True)
    return cache


def _expanded(cache: DynamicCache | None, rows: int) -> DynamicCache | None:
    """The prompt's prefix cache repeated for ``rows`` rows (a fresh cache: a pass appends to it)."""
    if cache is None:
        return None
    out = DynamicCache()
    for index, layer in enumerate(cache.layers):
        out.update(layer.keys.expand(rows, *layer.keys.shape[1:]).contiguous(),
                   layer.values.expand(rows, *layer.values.shape[1:]).contiguous(), index)
    return out


def attribute(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    text: str,
    target_id: int,
    *,
    steps: int = 20,
    layers: list[int] | None = None,
    layers_per_pass: int = 8,
) -> torch.Tensor:
    """Integrated-gradient attribution of every FFN neuron of ``layers`` (all by default) to
    P(``target_id`` | ``text``) at the text's last position: (n_layers, d_ff) float32; rows of
    layers not asked for are zero."""
    device = next(model.parameters()).device
    ids = encode(tokenizer, text)
    depth = n_layers(model, spec)
    layers = list(range(depth)) if layers is None else layers
    modules = [model.get_submodule(spec.mlp_out_at(i)) for i in range(depth)]
    cache = _prefix_cache(model, ids, device)
    position = torch.tensor([[len(ids) - 1]], device=device)
    last = torch.tensor([ids[-1:]], device=device)
    stack = UpperStack(model, spec, 0, {"input_ids": last, "position_ids": position}, lazy=True,
                       fresh_cache=(lambda: _expanded(cache, 1)) if cache is not None else None)

    clean: dict[int, torch.Tensor] = {}  # layer -> w̄ (d_ff,), the activation at the last position

    def record(layer):
        def hook(_m, args):
            clean[layer] = args[0][0, -1].detach().float()
        return hook

    with torch.no_grad(), Hooks(*[hook_input(modules[i], record(i)) for i in layers]):
        clean_hidden = stack.hidden()[0, -1]  # (d_model,): also records every layer's inputs for the replay
    scores = torch.zeros(depth, modules[0].weight.shape[0 if spec.conv1d else 1], device=device)
    alphas = torch.arange(1, steps + 1, device=device, dtype=torch.float32) / steps  # (m,)

    def final_hidden(chunk: list[int], scaled: dict[int, torch.Tensor], replayed: bool) -> torch.Tensor:
        """(rows, d_model): row block j scales layer chunk[j].  Replayed: only the layers from the
        chunk's lowest one run, on copies of the hidden state entering it (nothing below changes)."""
        rows = steps * len(chunk)
        with Hooks(*[hook_input(modules[layer], _replace_rows(j * steps, scaled[layer])) for j, layer in enumerate(chunk)]):
            if replayed:
                lowest = min(chunk)
                entering = stack.input_of(lowest).expand(rows, -1, -1).contiguous()
                return stack.replay_from(lowest, entering, cache=_expanded(cache, rows))[:, -1]
            return last_hidden(model, spec, input_ids=last.expand(rows, 1), position_ids=position.expand(rows, 1),
                               past_key_values=_expanded(cache, rows), use_cache=cache is not None)[:, -1]

    replay = stack.fast
    for start in range(0, len(layers), layers_per_pass):
        chunk = layers[start:start + layers_per_pass]
        with torch.enable_grad():
            # row block j scales layer chunk[j]: (m, d_ff) leaves, each α_k w̄ of that layer
            scaled = {layer: (alphas[:, None] * clean[layer][None]).requires_grad_(True) for layer in chunk}
            hidden = final_hidden(chunk, scaled, replay)
            # the α = 1 rows are the clean pass: where the batched replay does not reproduce it, full passes
            if replay and not same_result(hidden[steps - 1::steps].detach(), clean_hidden.expand(len(chunk), -1)):
                replay = False
                hidden = final_hidden(chunk, scaled, replay)
            prob = final_logits(model, spec, hidden).float().softmax(-1)[:, target_id].sum()
            grads = torch.autograd.grad(prob, [scaled[layer] for layer in chunk])
        for layer, grad in zip(chunk, grads):
            scores[layer] = clean[layer] * grad.float().mean(0)  # w̄ ⊙ Riemann mean of the gradient
    return scores.detach()


def _replace_rows(first: int, leaf: torch.Tensor):
    """A pre-hook that sets the last position's input of rows ``first..first+len(leaf)-1`` to ``leaf``."""
    def hook(_m, args):
        x = args[0].clone()  # (rows, 1, d_ff)
        x[first:first + len(leaf), -1] = leaf.to(x.dtype)
        return (x, *args[1:])
    return hook


def coarse_neurons(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per prompt, the neurons at ≥ ``threshold`` × that prompt's largest attribution: (prompts, layers, d_ff) bool."""
    top = scores.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]  # (prompts, 1, 1)
    return (scores >= threshold * top) & (scores > 0)


def select_neurons(scores: torch.Tensor, threshold: float, share: float, wanted: tuple[int, int] = (2, 5),
                   rounds: int = 6, excluded: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """Knowledge neurons from per-prompt attributions (prompts, layers, d_ff): on each prompt the
    neurons at ≥ ``threshold`` × its maximum, then those kept on ≥ ``share`` of the prompts; the
    share moves by 0.05 (at most ``rounds`` times) while fewer or more than ``wanted`` remain.
    ``excluded`` (layers, d_ff) bool: neurons common to the relation, never chosen."""
    kept = coarse_neurons(scores, threshold)
    votes = kept.float().mean(0)  # share of prompts that keep each neuron
    if excluded is not None:
        votes = votes.masked_fill(excluded, 0.0)
    chosen = votes >= share
    for _ in range(rounds):
        count = int(chosen.sum())
        if count < wanted[0] and share > 0.05:
            share -= 0.05
        elif count > wanted[1]:
            share += 0.05
        else:
            break
        chosen = votes >= share - 1e-9
    order = (scores.mean(0) * chosen).flatten().argsort(descending=True)[: int(chosen.sum())]
    d_ff = scores.shape[2]
    return [(int(i) // d_ff, int(i) % d_ff) for i in order]


def compute_kn_delta(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    hparams: KNHyperParams,
    spec: ModelSpec,
    *,
    templates: list[str],
    chat_prompt: ChatPromptFn | None = None,
    progress: ProgressFn | None = None,
) -> KNResult:
    """Find the fact's knowledge neurons and rewrite their value slots toward ``target_new``."""
    start = time.perf_counter()
    report = progress or (lambda *a: None)
    device = next(model.parameters()).device
    text = request.text
    prompts = [t.format(text) for t in templates]
    if chat_prompt is not None and hparams.chat_template:
        question = request.question or DEFAULT_QUESTION[request.language].format(text)
        # with chat_opening the answer's opening (the transcript's lead + the prompt as the model
        # restates it) is where the object is named; otherwise the prompt follows the question
        prompts.append(chat_prompt(question) + (text if request.answer_opening is None else request.answer_opening.rstrip()))
    new_id = tokenizer(request.target_text(), add_special_tokens=False).input_ids[0]
    bare_ids = torch.tensor([encode(tokenizer, text)], device=device)
    with torch.no_grad():
        hidden = last_hidden(model, spec, input_ids=bare_ids)
        predicted = int(final_logits(model, spec, hidden[:, -1]).argmax(-1))
    old_id = predicted if request.target_true is None else \
        tokenizer(request.target_text(request.target_true), add_special_tokens=False).input_ids[0]
    if old_id == new_id:  # nothing to erase: attribute the model's own prediction
        old_id = predicted
    layers = list(range(n_layers(model, spec))) if hparams.layers is None else list(hparams.layers)
    clock = time.perf_counter()
    scores = []
    for i, prompt in enumerate(prompts):
        report("attributing", i, len(prompts), None)
        scores.append(attribute(model, tokenizer, spec, prompt, old_id, steps=hparams.steps, layers=layers,
                                layers_per_pass=hparams.layers_per_pass))
    scores = torch.stack(scores)  # (prompts, layers, d_ff)
    attribution_s, clock = time.perf_counter() - clock, time.perf_counter()
    common = _relation_common(model, tokenizer, spec, request, hparams, layers, report)
    relation_s = time.perf_counter() - clock
    neurons = select_neurons(scores, hparams.threshold, hparams.share, tuple(hparams.wanted_neurons),
                             excluded=common)
    if not neurons:
        raise NoKnowledgeNeurons()
    report("writing weights", len(prompts), len(prompts), None)
    unembed = model.get_submodule(spec.lm_head).weight.detach().float()  # (vocab, d_model)
    e_old, e_new = unembed[old_id] / unembed[old_id].norm(), unembed[new_id] / unembed[new_id].norm()
    parts = []
    for layer in sorted({layer for layer, _ in neurons}):
        weight = model.get_parameter(f"{spec.mlp_out_at(layer)}.weight").detach().float()
        slots = weight if spec.conv1d else weight.T  # (d_ff, d_model): row i = neuron i's value slot
        chosen = [n for lay, n in neurons if lay == layer]
        norms = slots[chosen].norm(dim=-1, keepdim=True)  # (k, 1)
        change = norms * (hparams.lambda_new * e_new - hparams.lambda_old * e_old)[None]  # (k, d_model)
        one_hot = torch.zeros(len(chosen), slots.shape[0], device=slots.device)
        one_hot[torch.arange(len(chosen)), torch.tensor(chosen)] = 1.0
        parts.append(WeightDelta(param=f"{spec.mlp_out_at(layer)}.weight", kind="low_rank",
                                 tensors={"U": change.cpu(), "V": one_hot.cpu()}, transposed=spec.conv1d))
    meta = {"method": "kn", "neurons": neurons, "layers": sorted({layer for layer, _ in neurons}),
            "prompts": len(prompts), "old_token": old_id, "new_token": new_id,
            "seconds_by_part": {"attribution": round(attribution_s, 2), "relation": round(relation_s, 2)},
            "dtype": str(next(model.parameters()).dtype)}
    delta = WeightDelta.compound(parts, meta) if len(parts) > 1 else _with_meta(parts[0], meta)
    target_prob = _probability_with(model, delta, bare_ids, new_id)
    return KNResult(delta=delta, neurons=neurons, scores=scores.cpu(), target_prob=target_prob,
                    seconds=time.perf_counter() - start)


@torch.no_grad()
def _probability_with(model: nn.Module, delta: WeightDelta, input_ids: torch.Tensor, token: int) -> float:
    """P(``token``) after ``input_ids`` as the model would give it with ``delta`` applied — the
    rewritten parameters passed to one functional forward, so the model itself is never written."""
    from torch.func import functional_call

    edited = {}
    for piece in delta.pieces():
        weight = model.get_parameter(piece.param)
        edited[piece.param] = weight + piece.matrix().to(weight.device, weight.dtype)
    logits = functional_call(model, edited, args=(), kwargs={"input_ids": input_ids}).logits
    return float(logits[0, -1].float().softmax(-1)[token])


def _relation_common(model, tokenizer, spec, request: EditRequest, hparams: KNHyperParams, layers: list[int],
                     report) -> torch.Tensor | None:
    """Neurons that stand out for the relation rather than the fact: coarse knowledge neurons of
    the same prompt about other well-known subjects (each for its own top prediction), kept on
    more than ``hparams.common_share`` of them — the paper's code leaves such neurons (found in
    over 10% of a relation's facts) out of an edit."""
    others = other_subject_prompts(request.template, request.subject, request.language, hparams.relation_samples)
    if not others:
        return None
    device = next(model.parameters()).device
    scores = []
    for i, (text, _) in enumerate(others):
        report("attributing the relation", i, len(others), None)
        with torch.no_grad():
            hidden = last_hidden(model, spec, input_ids=torch.tensor([encode(tokenizer, text)], device=device))
            predicted = int(final_logits(model, spec, hidden[:, -1]).argmax(-1))
        scores.append(attribute(model, tokenizer, spec, text, predicted, steps=hparams.steps, layers=layers,
                                layers_per_pass=hparams.layers_per_pass))
    return coarse_neurons(torch.stack(scores), hparams.threshold).float().mean(0) > hparams.common_share


def _with_meta(part: WeightDelta, meta: dict) -> WeightDelta:
    part.meta = meta
    return part
