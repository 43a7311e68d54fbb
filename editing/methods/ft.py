"""FT-L: constrained fine-tuning of one layer's MLP output projection (Zhu et al., 2020;
the ROME paper's FT+L baseline).

ΔW = argmin −log P(o* | p(s))  subject to  ‖ΔW‖∞ ≤ ε  (projected after every Adam step),
with ε a fraction of the projection's mean |W₀| unless given absolutely (``FTHyperParams``).

ΔW is trained through a forward hook that adds k ΔWᵀ to the projection's output, so the
model's weights are never written and the function returns with the model bit-identical.

ΔW changes the layer's output at every position, so unlike ROME no prefix is exactly
unchanged.  ``hold_chat_preamble`` (off by default) holds the chat row's tokens before its
subject's last token -- the chat preamble and, on gemma3-270m, a few-shot transcript: ~118 of
its ~129 tokens -- at the unedited weights' keys and values (cached across edits), and each
step runs only the rest.  Exact at ΔW = 0; faster (gemma3-270m: 2.1 -> 1.45 s per edit) but
the edit then shows in fewer chat answers (docs/speed.md, "Edits").

Each step runs under bfloat16 autocast where the hardware does bf16 arithmetic
(``fast_bf16``); ΔW, W₀ and Adam's state stay in fp32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.delta import WeightDelta
from editing.hparams import FTHyperParams
from editing.machinery.forward import PassChecks
from editing.machinery.hooks import Hooks, hook_output
from editing.machinery.objective import Objective, ProgressFn
from editing.machinery.rows import ChatPromptFn, build_rows
from editing.machinery.suffix import PrefixCache
from editing.request import EditRequest
from editing.spec import ModelSpec, mlp_weight


@dataclass
class FTResult:
    delta: WeightDelta
    losses: list[float] = field(default_factory=list)
    target_prob: float = 0.0
    seconds: float = 0.0
    fast_path: bool = False


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bfloat16 arithmetic in hardware (a CUDA GPU that supports it; a CPU
    with AVX-512 BF16 or AMX), where autocast makes a step faster rather than slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def compute_ft_delta(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    request: EditRequest,
    hparams: FTHyperParams,
    spec: ModelSpec,
    layer: int,
    *,
    templates: list[str],
    chat_prompt: ChatPromptFn | None = None,
    progress: ProgressFn | None = None,
    prefix_cache: PrefixCache | None = None,
    checks: PassChecks | None = None,
) -> FTResult:
    start = time.perf_counter()
    device = next(model.parameters()).device
    report = progress or (lambda *a: None)
    report("preparing", 0, hparams.steps, None)
    rows = build_rows(tokenizer, request, templates, chat_prompt=chat_prompt if hparams.chat_template else None)
    n_bare = len(rows.rewrite) - rows.n_chat_rows
    held = [False] * n_bare + [hparams.hold_chat_preamble] * rows.n_chat_rows
    objective = Objective(model, tokenizer, spec, layer, rows.rewrite, fast=True, from_subject=held,
                          prefix_cache=prefix_cache, checks=checks)

    weight = mlp_weight(model, layer, spec)
    delta = torch.zeros(weight.shape, dtype=torch.float32, device=device, requires_grad=True)
    module = model.get_submodule(spec.mlp_out_at(layer))

    def add_delta(_m, args, output):
        x = args[0]  # (rows, seq, d_in)
        change = x.float() @ delta if spec.conv1d else x.float() @ delta.T  # (rows, seq, d_out)
        return output + change.to(output.dtype)

    bf16 = fast_bf16(device) if hparams.bf16_autocast is None else hparams.bf16_autocast
    radius = hparams.norm_constraint or hparams.relative_norm_constraint * weight.abs().float().mean().item()
    optimizer = torch.optim.Adam([delta], lr=hparams.lr or radius / 2, betas=hparams.adam_betas)
    losses: list[float] = []
    target_prob = 0.0
    with Hooks(hook_output(module, add_delta)):
        for step in range(hparams.steps):
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                per_row, _ = objective()  # (n_rows,) mean log P(target) per row
            per_row = per_row.float()
            loss = -per_row.mean()
            losses.append(loss.item())
            target_prob = per_row.detach().exp().mean().item()
            report("optimising", step + 1, hparams.steps, losses[-1])
            if losses[-1] < hparams.stop_loss or (hparams.stop_when_predicted and objective.all_predicted):
                break
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # project into the L∞ ball of radius ε around W₀
                delta.clamp_(-radius, radius)
    report("writing weights", hparams.steps, hparams.steps, None)
    result = WeightDelta(
        param=f"{spec.mlp_out_at(layer)}.weight",
        kind="dense",
        tensors={"delta": delta.detach().cpu()},
        transposed=spec.conv1d,
        meta={"method": "ft", "layer": layer, "radius": radius, "bf16_autocast": bf16, "steps": len(losses),
              "final_loss": losses[-1] if losses else None},
    )
    return FTResult(result, losses, target_prob, time.perf_counter() - start, objective.fast)
