"""The teacher-forced objective ROME and FT optimise, computed on length buckets.

Rows of very different lengths (short prefixed prompts, one long chat-template prompt) are
grouped so that padding stays small; each bucket keeps its own ``UpperStack`` (hidden states
entering the edit layer recorded once).  A hook installed by the caller reads
``objective.subject_mask`` to know where the subject's last tokens are in the bucket being run.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.forward import UpperStack, final_logits
from editing.spec import ModelSpec
from editing.tokens import PromptTarget, pad_batch, pad_id


def length_buckets(lengths: list[int], ratio: float = 2.0) -> list[list[int]]:
    """Row indices grouped so that no row is padded to more than ``ratio`` times its length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lengths[i] <= ratio * lengths[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


class _Bucket:
    def __init__(self, rows: list[PromptTarget], index: list[int], n_rewrite: int, tokenizer, device) -> None:
        self.batch = pad_batch([rows[i].ids for i in index], pad_id(tokenizer), device)
        self.subject_mask = torch.zeros(self.batch.input_ids.shape, dtype=torch.bool, device=device)
        t_local, t_pos, t_ids, t_global, k_local, k_pos, k_global = [], [], [], [], [], [], []
        for local, i in enumerate(index):
            row = rows[i]
            self.subject_mask[local, row.subject_positions] = True
            if i < n_rewrite:
                t_local += [local] * len(row.target_ids)
                t_pos += row.target_positions
                t_ids += row.target_ids
                t_global += [i] * len(row.target_ids)
            else:
                k_local.append(local)
                k_pos.append(len(row.ids) - 1)
                k_global.append(i - n_rewrite)

        def tensor(x):
            return torch.tensor(x, dtype=torch.long, device=device)

        self.t_local, self.t_pos, self.t_ids, self.t_global = map(tensor, (t_local, t_pos, t_ids, t_global))
        self.k_local, self.k_pos, self.k_global = map(tensor, (k_local, k_pos, k_global))
        self.stack: UpperStack | None = None


class Objective:
    """Per-row mean target log-probability and next-token distributions of the KL rows."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        spec: ModelSpec,
        layer: int,
        rewrite: list[PromptTarget],
        kl: list[PromptTarget] = (),
        *,
        fast: bool = True,
    ) -> None:
        self.model, self.spec = model, spec
        self.device = next(model.parameters()).device
        rows = [*rewrite, *kl]
        self.n_rewrite, self.n_kl = len(rewrite), len(kl)
        self.buckets = [
            _Bucket(rows, index, self.n_rewrite, tokenizer, self.device)
            for index in length_buckets([len(r.ids) for r in rows])
        ]
        for b in self.buckets:
            b.stack = UpperStack(model, spec, layer, b.batch.input_ids, b.batch.attention_mask, fast=fast)
        self.fast = all(b.stack.fast for b in self.buckets)
        self.counts = torch.bincount(
            torch.tensor([i for i, r in enumerate(rewrite) for _ in r.target_ids], device=self.device),
            minlength=self.n_rewrite,
        )
        self.subject_mask: torch.Tensor | None = None  # of the bucket being run, for the caller's hook
        self.batch = None
        self.all_predicted = False  # after a call: every target token is the argmax (teacher forcing)

    @torch.no_grad()
    def subject_keys(self, path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At module ``path`` (the edit layer's MLP output projection), over the rewrite rows:
        (mean input at every subject occurrence, input at the first row's last subject
        occurrence — the bare prompt — and mean output at the subject occurrences)."""
        from editing.hooks import Trace

        keys, outputs, bare = [], [], None
        for b in self.buckets:
            with Trace(self.model, path, retain_input=True) as t:
                b.stack.hidden()
            for local, row_mask in enumerate(b.subject_mask):
                if local in b.k_local.tolist():
                    continue
                keys.append(t.input[local][row_mask])
                outputs.append(t.output[local][row_mask])
                if bare is None and b.t_global[b.t_local == local][0] == 0:
                    bare = t.input[local][row_mask][-1]
        return torch.cat(keys).float().mean(0), bare.float(), torch.cat(outputs).float().mean(0)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean log P(target) per rewrite row (n_rewrite,), log-distributions of KL rows (n_kl, vocab))."""
        per_row = torch.zeros(self.n_rewrite, device=self.device)
        kl_logp = None
        predicted = True
        for b in self.buckets:
            self.subject_mask, self.batch = b.subject_mask, b.batch
            hidden = b.stack.hidden()  # (bucket rows, seq, d)
            if len(b.t_local):
                logp = final_logits(self.model, self.spec, hidden[b.t_local, b.t_pos]).float().log_softmax(-1)
                token_logp = logp.gather(1, b.t_ids[:, None]).squeeze(1)
                per_row = per_row.index_add(0, b.t_global, token_logp)
                predicted = predicted and bool((logp.argmax(-1) == b.t_ids).all())
            if len(b.k_local):
                logp = final_logits(self.model, self.spec, hidden[b.k_local, b.k_pos]).float().log_softmax(-1)
                if kl_logp is None:
                    kl_logp = torch.zeros(self.n_kl, logp.shape[-1], device=self.device)
                kl_logp = kl_logp.index_copy(0, b.k_global, logp)
        self.all_predicted = predicted
        return per_row / self.counts, kl_logp
