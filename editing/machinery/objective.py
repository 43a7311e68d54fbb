"""The teacher-forced objective ROME and FT optimise.

All rows run in one packed pass (``SuffixStack``): with ``from_subject`` (ROME: only the
subject's last token changes) each row from its first subject end on, the rest held in a KV
cache; otherwise (FT) whole rows.  Where the model does not allow packing, rows are grouped
in length buckets so that padding stays small, and each bucket replays the layers from the
edit layer up (``UpperStack``).  A hook installed by the caller reads
``objective.subject_mask`` to know where the subject's last tokens are in the bucket being
run, in the layout that bucket runs.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from editing.machinery.forward import PassChecks, UpperStack, final_logits
from editing.machinery.suffix import PrefixCache, SuffixStack
from editing.machinery.tokens import PromptTarget, length_buckets, pad_batch, pad_id
from editing.spec import ModelSpec

ProgressFn = Callable[[str, int, int, float | None], None]  # an optimiser's (stage, step, total, loss)


class _Bucket:
    """Rows ``index`` run together; ``place(i, p)`` -> (row, column) of position ``p`` of row
    ``i`` in what the stack runs, a tensor of ``shape`` (rows run, columns)."""

    def __init__(self, rows: list[PromptTarget], index: list[int], n_rewrite: int, kl_first: list[int],
                 place: Callable[[int, int], tuple[int, int]], shape: tuple[int, int], device) -> None:
        self.subject_mask = torch.zeros(shape, dtype=torch.bool, device=device)
        self.rewrite_subject = torch.zeros_like(self.subject_mask)
        self.bare: tuple[int, int] | None = None  # where row 0's (the bare prompt's) last subject token is
        t_local, t_pos, t_ids, t_global, k_local, k_pos, k_global = [], [], [], [], [], [], []
        for i in index:
            row = rows[i]
            for p in row.subject_positions:
                self.subject_mask[place(i, p)] = True
                if i < n_rewrite:
                    self.rewrite_subject[place(i, p)] = True
            if i == 0:
                self.bare = place(i, max(row.subject_positions))
            if i < n_rewrite:
                for p in row.target_positions:
                    local, column = place(i, p)
                    t_local.append(local)
                    t_pos.append(column)
                t_ids += row.target_ids
                t_global += [i] * len(row.target_ids)
            else:  # a KL row: the distribution at each position before a target token (usually the last)
                for j, p in enumerate(row.target_positions):
                    local, column = place(i, p)
                    k_local.append(local)
                    k_pos.append(column)
                    k_global.append(kl_first[i - n_rewrite] + j)

        def tensor(x):
            return torch.tensor(x, dtype=torch.long, device=device)

        self.t_local, self.t_pos, self.t_ids, self.t_global = map(tensor, (t_local, t_pos, t_ids, t_global))
        self.k_local, self.k_pos, self.k_global = map(tensor, (k_local, k_pos, k_global))
        self.stack: UpperStack | SuffixStack | None = None


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
        from_subject: bool | list[bool] = False,
        prefix_cache: PrefixCache | None = None,
        checks: PassChecks | None = None,
    ) -> None:
        self.model, self.spec = model, spec
        checks = checks if checks is not None else PassChecks()
        self.device = next(model.parameters()).device
        rows = [*rewrite, *kl]
        self.n_rewrite, self.n_kl = len(rewrite), len(kl)
        # every KL row's positions numbered in one sequence, KL row i's from kl_first[i] on
        counts = [len(r.target_positions) for r in kl]
        kl_first = [0, *accumulate(counts)][:len(kl)]
        self.kl_row = torch.tensor([i for i, c in enumerate(counts) for _ in range(c)], dtype=torch.long,
                                   device=self.device)  # (KL positions,) the KL row of each
        pad = pad_id(tokenizer)
        # per row: run it from its first subject end on (the rest held in the KV cache)?  A list
        # gives it per rewrite row (FT's chat row: ``hold_chat_preamble``); KL rows then run whole.
        held = [from_subject] * len(rows) if isinstance(from_subject, bool) else [*from_subject, *[False] * len(kl)]
        self.buckets: list[_Bucket] = []
        if fast:  # every row in one packed pass (ROME: from its first subject end on)
            starts = [min(r.subject_positions) if h else 0 for r, h in zip(rows, held)]
            stack = SuffixStack(model, spec, layer, [r.ids for r in rows], starts, pad, self.device, prefix_cache,
                                checks)
            if stack.available:
                bucket = _Bucket(rows, list(range(len(rows))), self.n_rewrite, kl_first,
                                 lambda i, p: (0, stack.place(i, p)),
                                 (1, stack.length), self.device)
                bucket.stack = stack
                self.buckets = [bucket]
        if not self.buckets:
            for index in length_buckets([len(r.ids) for r in rows]):
                local = {i: n for n, i in enumerate(index)}
                batch = pad_batch([rows[i].ids for i in index], pad, self.device)
                bucket = _Bucket(rows, index, self.n_rewrite, kl_first, lambda i, p, local=local: (local[i], p),
                                 tuple(batch.input_ids.shape), self.device)
                inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
                bucket.stack = UpperStack(model, spec, layer, inputs, fast=fast, checks=checks)
                self.buckets.append(bucket)
        self.fast = all(b.stack.fast for b in self.buckets)
        self.counts = torch.bincount(
            torch.tensor([i for i, r in enumerate(rewrite) for _ in r.target_ids], device=self.device),
            minlength=self.n_rewrite,
        )
        self.current: _Bucket | None = None  # the bucket being run, for the caller's hook
        self.subject_mask: torch.Tensor | None = None  # its subject positions
        # after a call: per rewrite row, whether its every target token is the argmax (teacher forcing)
        self.rows_predicted: torch.Tensor | None = None

    @property
    def all_predicted(self) -> bool:
        """After a call: every target token of every row is the argmax."""
        return self.rows_predicted is not None and bool(self.rows_predicted.all())

    def at_subject(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For ``x`` (bucket rows, seq, d), a tensor seen at the edit layer while the current
        bucket runs: its vectors at the subject's last tokens of the rewrite rows (n, d), and
        the bare prompt's (rewrite row 0) last subject token (d,) if that row is in the bucket."""
        b = self.current
        bare = x[b.bare] if b.bare is not None else None
        return x[b.rewrite_subject], bare

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean log P(target) per rewrite row (n_rewrite,), next-token log-distributions at the KL rows'
        positions (KL positions, vocab); ``kl_row`` says whose each is)."""
        picked, t_ids, t_global, k_global = [], [], [], []
        for b in self.buckets:
            self.current, self.subject_mask = b, b.subject_mask
            hidden = b.stack.hidden()  # (bucket rows, seq, d)
            picked += [hidden[b.t_local, b.t_pos], hidden[b.k_local, b.k_pos]]
            t_ids.append(b.t_ids)
            t_global.append(b.t_global)
            k_global.append(b.k_global)
        # one unembedding for all buckets: on gemma3-270m the 262k-row lm_head is read once a step
        n_target = sum(len(t) for t in t_ids)
        t_hidden = torch.cat(picked[0::2])
        logp = final_logits(self.model, self.spec, torch.cat([t_hidden, *picked[1::2]])).float().log_softmax(-1)
        t_logp, k_logp = logp[:n_target], logp[n_target:]
        t_ids_all = torch.cat(t_ids)
        token_logp = t_logp.gather(1, t_ids_all[:, None]).squeeze(1)
        per_row = torch.zeros(self.n_rewrite, device=self.device).index_add(0, torch.cat(t_global), token_logp)
        hits = (t_logp.argmax(-1) == t_ids_all).float()
        per_row_hits = torch.zeros(self.n_rewrite, device=self.device).index_add(0, torch.cat(t_global), hits)
        self.rows_predicted = per_row_hits == self.counts  # (n_rewrite,) every token of the row is the argmax
        kl_logp = None
        if self.n_kl:
            kl_logp = torch.zeros_like(k_logp).index_copy(0, torch.cat(k_global), k_logp)
        return per_row / self.counts, kl_logp
