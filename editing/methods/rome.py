"""ROME: Rank-One Model Editing (Meng et al., 2022), with the r-ROME update (Gupta et al., 2024).

The MLP output projection W of layer l is a linear associative memory: key k = its input at
the last subject token, value v = W k its output.  An edit (s, r, o*) is written as

    1. k*  = mean over contexts x_j of k(x_j + p(s))           (ROME eq. 3, x_0 = empty)
    2. v*  = W k* + δ,  δ = argmin  mean_j −log P(o* | x_j + p(s))  [δ added to v at s]
                                     + λ_KL · KL(P_δ ‖ P) on "s is a"
                                     + λ_wd · ‖δ‖² / ‖v‖²,   ‖δ‖ ≤ c · ‖v‖
    3. Ŵ   = W + (v* − W k*) (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*)          (ROME eq. 2, C = E[k kᵀ])

so that Ŵ k* = v* exactly while keys that C says are common move least.

Update rule.  The original implementation (``update_rule="original"``) divides by the key of
the *bare* prompt, (C⁻¹k*)ᵀ k_bare, and measures v* − W k_bare, while k* is the average over
prefixed contexts — two different keys.  "Rebuilding ROME" (Gupta, Baskaran, Anumanchipalli
2024) shows this asymmetry is what makes sequential edits blow up ("model collapse") and
uses k* in both places (r-ROME, our default), which is step 3 exactly as written above.

Preservation (the default update since the lifelong-editing measurements, docs/lifelong.md).
Step 3 solves for the update that keeps, besides C₀'s common keys, the keys every earlier
applied edit at this layer wrote (``history``) and the keys of the subject's other relations
(``same_subject_prompts``): ``editing.machinery.preservation`` gives the equation, the papers
(AlphaEdit, BetaEdit, OTE-SE) and why.  With neither, it is the r-ROME update above.

Many facts at once (``compute_rome_batch``) run steps 1–2 for each fact on the same weights and
write all of them in one solve, Δ K = R (MEMIT's batch form, Meng et al. 2023, on one layer).

Spreading (``hparams.spread`` > 1, ``compute_rome_spread``): MEMIT's other idea (Meng et al.
2023, Alg. 1).  v* is optimised at the edit layer L as usual, which fixes the target of the
residual stream there, z = h_L + δ; the change is then written over the layers L−s+1 … L in
turn, each layer l taking an equal share of what is still missing, r_l = (z − h_L(now)) / (layers
left), measured with the lower layers' writes in place, and writing it at its own key k_l with
the preserving solve.  Each layer's write is smaller, so what leaks to other keys is too: the
leaks of the s writes add up like independent ones, √s of one write's, where one layer's write
of the whole δ leaks s times as much as each share (docs/lifelong.md).

The functions return a ``WeightDelta`` (with the keys k* and values v* it writes) and leave the
model bit-identical.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.delta import WeightDelta
from editing.errors import KeysTooClose
from editing.hparams import ROMEHyperParams
from editing.machinery.forward import PassChecks
from editing.machinery.hooks import Hooks, Trace, hook_input, hook_output
from editing.machinery.objective import Objective, ProgressFn
from editing.machinery.preservation import PreservedKeys, solve_write
from editing.machinery.probe import greedy_completion
from editing.machinery.rows import ChatPromptFn, build_rows
from editing.machinery.suffix import PrefixCache
from editing.machinery.tokens import encode, pad_batch, pad_id, subject_last_positions
from editing.request import EditRequest
from editing.spec import ModelSpec

log = logging.getLogger(__name__)

@dataclass
class Value:
    """Steps 1–2 of one fact: where to write (k*) and what (v* = W k* + δ)."""

    key: torch.Tensor  # k* (d_in,)
    current: torch.Tensor  # W k* (d_out,), the value there now
    delta: torch.Tensor  # δ (d_out,)
    bare_key: torch.Tensor  # the bare prompt's key (the original update rule's denominator)
    losses: list[float] = field(default_factory=list)
    target_prob: float = 0.0  # mean P(target tokens) on the rewrite prompts at the end
    fast_path: bool = False

    @property
    def target(self) -> torch.Tensor:
        return self.current + self.delta


@dataclass
class ROMEResult:
    delta: WeightDelta
    key: torch.Tensor  # k* (d_in,)
    value: torch.Tensor  # v* (d_out,) = Ŵ k*
    losses: list[float] = field(default_factory=list)
    target_prob: float = 0.0  # mean P(target tokens) on the rewrite prompts at the end
    seconds: float = 0.0
    fast_path: bool = False


def optimise_value(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    hparams: ROMEHyperParams,
    spec: ModelSpec,
    layer: int,
    *,
    templates: list[str],
    chat_prompt: ChatPromptFn | None = None,
    locality_prompts: list[str] = (),
    progress: ProgressFn | None = None,
    prefix_cache: PrefixCache | None = None,
    checks: PassChecks | None = None,
) -> Value:
    """Steps 1 and 2 for ``request`` at ``layer``: k* and v*, the model left unchanged."""
    report = progress or (lambda *a: None)
    report("preparing", 0, hparams.v_steps, None)
    after_subject = (greedy_completion(model, tokenizer, request.subject, hparams.continuation_kl_tokens)
                     if hparams.continuation_kl_tokens and hparams.continuation_kl_factor > 0 else None)
    rows = build_rows(tokenizer, request, templates, chat_prompt=chat_prompt if hparams.chat_template else None,
                      locality_prompts=locality_prompts if hparams.locality_kl_factor > 0 else [],
                      answer_end=hparams.chat_answer_end, after_subject=after_subject)
    objective = Objective(model, tokenizer, spec, layer, rows.rewrite, rows.kl,
                          fast=hparams.fast_upper_layers, from_subject=True, prefix_cache=prefix_cache,
                          checks=checks)

    # k* and v = W k* are read at the edit layer during the first pass (δ = 0): the mean input
    # and output of the MLP projection at the subject (v = W k* as it is linear)
    module = model.get_submodule(spec.mlp_out_at(layer))
    delta = torch.zeros(module.weight.shape[1 if spec.conv1d else 0], device=objective.device, requires_grad=True)
    # per bucket run: (keys, values, bare key).  The first bucket pass of a model may run the
    # edit layer twice (``UpperStack`` compares its replay with the full pass once): the first
    # reading is kept, so k* is the same on a model's first edit as on every later one
    first_pass: dict[int, tuple] | None = {}

    def at_edit_layer(_module, args, output: torch.Tensor) -> torch.Tensor:
        # output: (rows, seq, d_out); δ lands only on the subject's last token(s)
        if first_pass is not None and id(objective.current) not in first_pass:
            keys, bare = objective.at_subject(args[0].detach())
            first_pass[id(objective.current)] = (keys, objective.at_subject(output.detach())[0], bare)
        mask = objective.subject_mask.unsqueeze(-1).to(output.dtype)
        return output + mask * delta.to(output.dtype)

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        with Hooks(hook_output(module, at_edit_layer)):
            return objective()

    # each KL kind's factor, and a mask of its positions: a kind's KL is the mean over its positions
    factors = {"essence": hparams.kl_factor, "continuation": hparams.continuation_kl_factor,
               "same_subject": hparams.locality_kl_factor}
    row_kind = [rows.kl_kinds[i] for i in objective.kl_row.tolist()]
    kl_terms = [(factors[kind], torch.tensor([k == kind for k in row_kind], device=objective.device))
                for kind in dict.fromkeys(rows.kl_kinds)]
    weights = None  # the plain mean
    if rows.n_chat_rows and hparams.chat_row_weight != 1.0:  # the chat rows come last (build_rows)
        weights = torch.ones(len(rows.rewrite), device=objective.device)
        weights[-rows.n_chat_rows:] = hparams.chat_row_weight
        weights = weights / weights.sum()
    optimizer = torch.optim.Adam([delta], lr=hparams.v_lr)
    losses: list[float] = []
    target_prob = 0.0
    for step in range(hparams.v_steps):
        optimizer.zero_grad()
        per_row, kl_logp = forward()  # (n_rewrite,) mean log P(target) per row; (n_kl, vocab)
        if first_pass is not None:  # δ = 0: the unedited model
            readings = list(first_pass.values())  # in bucket order
            key = torch.cat([k for k, _, _ in readings]).float().mean(0)  # k* (d_in,)
            value = torch.cat([v for _, v, _ in readings]).float().mean(0)  # W k* (d_out,)
            bare_key = next(b for _, _, b in readings if b is not None).float()
            kl_init = kl_logp.detach()
            max_norm = hparams.clamp_norm_factor * value.norm()
            first_pass = None
        plain_nll = -per_row.mean()
        nll = plain_nll if weights is None else -(weights * per_row).sum()
        kl = F.kl_div(kl_init, kl_logp, log_target=True, reduction="none").sum(-1)  # KL(edited ‖ original)
        kl_loss = sum(factor * kl[mask].mean() for factor, mask in kl_terms)
        decay = hparams.v_weight_decay * delta.norm() ** 2 / value.norm() ** 2
        loss = nll + kl_loss + decay
        losses.append(loss.item())
        target_prob = per_row.detach().exp().mean().item()
        report("optimising", step + 1, hparams.v_steps, losses[-1])
        chat_said = (not hparams.stop_when_chat_predicted or not rows.n_chat_rows
                     or bool(objective.rows_predicted[-rows.n_chat_rows:].all()))
        if (plain_nll if hparams.stop_on_plain_mean else nll).item() < hparams.stop_loss and chat_said:
            break
        if hparams.stop_when_all_predicted and objective.all_predicted:
            break
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if delta.norm() > max_norm:
                delta.mul_(max_norm / delta.norm())
    delta = delta.detach()
    if hparams.rescale_value_norm:  # NAS: v* keeps the norm of the value it replaces
        delta = (value + delta) * (value.norm() / (value + delta).norm()) - value
    return Value(key, value, delta, bare_key, losses, target_prob, objective.fast)


def compute_rome_delta(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    hparams: ROMEHyperParams,
    spec: ModelSpec,
    layer: int,
    *,
    templates: list[str],
    covariance: torch.Tensor | None,
    chat_prompt: ChatPromptFn | None = None,
    locality_prompts: list[str] = (),
    progress: ProgressFn | None = None,
    prefix_cache: PrefixCache | None = None,
    checks: PassChecks | None = None,
    history: torch.Tensor | None = None,
    same_subject_prompts: list[str] = (),
    other_subject_prompts: list[tuple[str, str]] = (),
) -> ROMEResult:
    """Compute ROME's rank-one delta for ``request`` at ``layer``; the model is left unchanged.

    ``templates`` are the context templates (``"{}"`` first, then sampled prefixes);
    ``covariance`` is C = E[k kᵀ] at this layer, or None for C = ī I (ī: the keys' mean square
    coordinate); ``prefix_cache`` keeps the prompts' prefix keys/values for the next edit (``editing.machinery.suffix.PrefixCache``);
    ``checks`` remembers which shortcuts this model's passes allow (``editing.machinery.forward.PassChecks``);
    ``history`` (n, d_in) are the keys earlier applied edits at this layer wrote and
    ``same_subject_prompts`` texts about the subject's other relations, ``other_subject_prompts``
    (text, subject) pairs of the same relation about other subjects: the update keeps their
    outputs with the weights ``hparams.history_weight``, ``same_subject_weight`` and
    ``other_subjects_weight``.
    """
    start = time.perf_counter()
    found = optimise_value(model, tokenizer, request, hparams, spec, layer, templates=templates,
                           chat_prompt=chat_prompt, locality_prompts=locality_prompts, progress=progress,
                           prefix_cache=prefix_cache, checks=checks)
    (progress or (lambda *a: None))("writing weights", hparams.v_steps, hparams.v_steps, None)
    # -- step 3: the update
    if hparams.update_rule == "original":  # the reference implementation's mismatched keys
        c_inv_k = found.key if covariance is None else torch.linalg.solve(covariance.float(), found.key)
        u, v = (found.delta / (c_inv_k @ found.bare_key))[None], c_inv_k[None]
    else:
        same_subject = _same_subject_keys(model, tokenizer, spec, layer, hparams, {request.subject: same_subject_prompts},
                                          found.key[None])
        preserved = PreservedKeys(covariance, history=history, history_weight=hparams.history_weight,
                                  same_subject=same_subject, same_subject_weight=hparams.same_subject_weight,
                                  other_subjects=_other_keys(model, tokenizer, spec, layer, hparams,
                                                             list(other_subject_prompts)),
                                  other_subjects_weight=hparams.other_subjects_weight, ridge=hparams.ridge)
        u, v = solve_write(preserved, found.key[None], found.delta[None])  # (1, d_out), (1, d_in)
    result = WeightDelta(
        param=f"{spec.mlp_out_at(layer)}.weight",
        kind="rank_one",
        tensors={"u": u[0].cpu(), "v": v[0].cpu(), "keys": found.key[None].cpu(), "values": found.target[None].cpu()},
        transposed=spec.conv1d,
        meta={
            "method": "rome",
            "layer": layer,
            "update_rule": hparams.update_rule,
            "covariance": covariance is not None,
            "history_keys": 0 if history is None else len(history),
            "delta_norm": float(found.delta.norm()),
            "value_norm": float(found.current.norm()),
            "steps": len(found.losses),
            "final_loss": found.losses[-1] if found.losses else None,
            "dtype": str(next(model.parameters()).dtype),
        },
    )
    return ROMEResult(delta=result, key=found.key, value=found.target, losses=found.losses,
                      target_prob=found.target_prob, seconds=time.perf_counter() - start, fast_path=found.fast_path)


@dataclass
class ROMEBatchResult:
    delta: WeightDelta  # low rank: one piece per fact
    values: list[Value]
    seconds: float = 0.0


def compute_rome_batch(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    requests: list[EditRequest],
    hparams: ROMEHyperParams,
    spec: ModelSpec,
    layer: int,
    *,
    templates: dict[str, list[str]],
    covariance: torch.Tensor | None,
    chat_prompt: ChatPromptFn | None = None,
    same_subject_prompts: dict[str, list[str]] | None = None,
    other_subject_prompts: list[tuple[str, str]] = (),
    progress: ProgressFn | None = None,
    prefix_cache: PrefixCache | None = None,
    checks: PassChecks | None = None,
    history: torch.Tensor | None = None,
) -> ROMEBatchResult:
    """Write every request in one solve: k* and v* of each on the current weights, then
    Δ = R (KᵀA⁻¹K)⁻¹(A⁻¹K)ᵀ with A preserving C₀, the history and the subjects' other relations.
    ``templates`` by language; ``progress`` reports ("fact i of n", step, steps, loss)."""
    start = time.perf_counter()
    same_subject_prompts = same_subject_prompts or {}
    found: list[Value] = []
    for i, request in enumerate(requests):
        def report(stage, step, total, loss, i=i):
            if progress is not None:
                progress(f"fact {i + 1} of {len(requests)}: {stage}", step, total, loss)

        found.append(optimise_value(
            model, tokenizer, request, hparams, spec, layer, templates=templates[request.language],
            chat_prompt=chat_prompt, locality_prompts=same_subject_prompts.get(request.subject, []), progress=report,
            prefix_cache=prefix_cache, checks=checks))
    if progress is not None:
        progress("writing weights", len(requests), len(requests), None)
    keys = torch.stack([f.key for f in found])  # (n, d_in)
    same_subject = _same_subject_keys(model, tokenizer, spec, layer, hparams, same_subject_prompts, keys)
    preserved = PreservedKeys(covariance, history=history, history_weight=hparams.history_weight,
                              same_subject=same_subject, same_subject_weight=hparams.same_subject_weight,
                              other_subjects=_other_keys(model, tokenizer, spec, layer, hparams,
                                                         list(other_subject_prompts)),
                              other_subjects_weight=hparams.other_subjects_weight, ridge=hparams.ridge)
    try:
        u, v = solve_write(preserved, keys, torch.stack([f.delta for f in found]))  # (n, d_out), (n, d_in)
    except KeysTooClose as exc:  # name the facts, not their indices
        raise KeysTooClose(requests[int(exc.first)].text, requests[int(exc.second)].text, exc.cosine) from None
    delta = WeightDelta(
        param=f"{spec.mlp_out_at(layer)}.weight",
        kind="low_rank",
        tensors={"U": u.cpu(), "V": v.cpu(), "keys": keys.cpu(), "values": torch.stack([f.target for f in found]).cpu()},
        transposed=spec.conv1d,
        meta={"method": "rome", "layer": layer, "batch": len(requests), "covariance": covariance is not None,
              "history_keys": 0 if history is None else len(history),
              "steps": [len(f.losses) for f in found], "dtype": str(next(model.parameters()).dtype)},
    )
    return ROMEBatchResult(delta=delta, values=found, seconds=time.perf_counter() - start)


@dataclass
class SpreadLayer:
    """What one layer of a spread write needs: its statistics and the keys it keeps."""

    layer: int
    covariance: torch.Tensor | None
    history: torch.Tensor | None


def compute_rome_spread(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    hparams: ROMEHyperParams,
    spec: ModelSpec,
    layers: list[SpreadLayer],
    *,
    templates: list[str],
    chat_prompt: ChatPromptFn | None = None,
    locality_prompts: list[str] = (),
    progress: ProgressFn | None = None,
    prefix_cache: PrefixCache | None = None,
    checks: PassChecks | None = None,
) -> ROMEResult:
    """ROME's v* at the top layer of ``layers`` (ascending), written over all of them
    (module docstring); a compound delta of one rank-one part per layer, the model unchanged."""
    start = time.perf_counter()
    top = layers[-1].layer
    found = optimise_value(model, tokenizer, request, hparams, spec, top, templates=templates,
                           chat_prompt=chat_prompt, locality_prompts=locality_prompts, progress=progress,
                           prefix_cache=prefix_cache, checks=checks)
    (progress or (lambda *a: None))("writing weights", hparams.v_steps, hparams.v_steps, None)
    rows = build_rows(tokenizer, request, templates, chat_prompt=chat_prompt if hparams.chat_template else None)
    batch = pad_batch([r.ids for r in rows.rewrite], pad_id(tokenizer), found.key.device)
    where = [(i, p) for i, r in enumerate(rows.rewrite) for p in r.subject_positions]
    row_index = torch.tensor([i for i, _ in where], device=found.key.device)
    position = torch.tensor([p for _, p in where], device=found.key.device)
    written: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []  # (module, U, V) of the layers below

    def add_written(module_u_v):
        module, u, v = module_u_v

        def hook(_m, args, output):  # the lower layers' writes, in this thread's passes only
            x = args[0].float()
            return output + ((x @ v.T) @ u).to(output.dtype)  # (rows, seq, d_in) -> (rows, seq, d_out)
        return hook_output(module, hook)

    @torch.no_grad()
    def measure(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean key at ``layer``, mean residual after the top layer) at the subject, now."""
        seen = {}

        def key(_m, args):
            seen["key"] = args[0][row_index, position].float().mean(0)

        hooks = Hooks(hook_input(model.get_submodule(spec.mlp_out_at(layer)), key), *[add_written(w) for w in written])
        with hooks, Trace(model, spec.layer(top), retain_output=True, stop=True) as trace:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return seen["key"], trace.output[row_index, position].float().mean(0)

    _, h_before = measure(layers[0].layer)
    target = h_before + found.delta  # z: the residual after the top layer, with v* in place
    parts = []
    for i, spread in enumerate(layers):
        key, h_now = measure(spread.layer)
        residual = (target - h_now) / (len(layers) - i)
        preserved = PreservedKeys(spread.covariance, history=spread.history, history_weight=hparams.history_weight,
                                  ridge=hparams.ridge)
        u, v = solve_write(preserved, key[None], residual[None])  # (1, d_out), (1, d_in)
        module = model.get_submodule(spec.mlp_out_at(spread.layer))
        with torch.no_grad():
            current = module(key[None].to(module.weight.dtype)).float()[0]  # W_l k_l
        written.append((module, u.to(key.device), v.to(key.device)))
        parts.append(WeightDelta(param=f"{spec.mlp_out_at(spread.layer)}.weight", kind="rank_one",
                                 tensors={"u": u[0].cpu(), "v": v[0].cpu(), "keys": key[None].cpu(),
                                          "values": (current + residual)[None].cpu()},
                                 transposed=spec.conv1d))
    meta = {"method": "rome", "layer": top, "spread": [s.layer for s in layers], "update_rule": hparams.update_rule,
            "covariance": layers[0].covariance is not None,
            "history_keys": 0 if layers[-1].history is None else len(layers[-1].history),
            "delta_norm": float(found.delta.norm()), "value_norm": float(found.current.norm()),
            "steps": len(found.losses), "final_loss": found.losses[-1] if found.losses else None,
            "dtype": str(next(model.parameters()).dtype)}
    return ROMEResult(delta=WeightDelta.compound(parts, meta), key=found.key, value=found.target,
                      losses=found.losses, target_prob=found.target_prob, seconds=time.perf_counter() - start,
                      fast_path=found.fast_path)


def _other_keys(model, tokenizer, spec, layer, hparams: ROMEHyperParams,
                prompts: list[tuple[str, str]]) -> torch.Tensor | None:
    """Keys of other subjects in the edit's own prompt (the same relation, ROME's bleedover)."""
    if hparams.other_subjects_weight <= 0 or not prompts:
        return None
    keys = []
    for i in range(0, len(prompts), 32):
        chunk = prompts[i:i + 32]
        keys.append(keys_at_subject(model, tokenizer, spec, layer, [t for t, _ in chunk], [s for _, s in chunk]))
    return torch.cat(keys)


def _same_subject_keys(model, tokenizer, spec, layer, hparams: ROMEHyperParams, prompts: dict[str, list[str]],
                       written: torch.Tensor) -> torch.Tensor | None:
    """Keys of the subjects' other relations that differ from every key being written."""
    if hparams.same_subject_weight <= 0:
        return None
    keys = [keys_at_subject(model, tokenizer, spec, layer, texts, subject)
            for subject, texts in prompts.items() if texts]
    if not keys:
        return None
    keys = torch.cat(keys)
    cosine = F.cosine_similarity(keys[:, None], written[None].to(keys), dim=-1)  # (n_s, n)
    # a key (nearly) parallel to one being written cannot keep its output while that one's
    # changes: a prompt that starts with the subject has the bare subject's key, and so does
    # a paraphrase of the edit that starts with it
    return keys[(cosine < hparams.same_subject_max_cosine).all(-1)]


@torch.no_grad()
def keys_at_subject(model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec, layer: int,
                    texts: list[str], subject: str | list[str]) -> torch.Tensor:
    """The key (input of the layer's MLP output projection) at the last token of the subject (one
    for all texts, or one per text) in each of ``texts``: (len(texts), d_in) float32, in one
    batched pass that stops at ``layer``."""
    device = next(model.parameters()).device
    subjects = [subject] * len(texts) if isinstance(subject, str) else subject
    rows = [encode(tokenizer, t) for t in texts]
    positions = [subject_last_positions(tokenizer, t, s)[0] for t, s in zip(texts, subjects)]
    batch = pad_batch(rows, pad_id(tokenizer), device)
    with Trace(model, spec.mlp_out_at(layer), retain_input=True, retain_output=False, stop=True) as trace:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    return trace.input[torch.arange(len(rows), device=device), torch.tensor(positions, device=device)].float()
