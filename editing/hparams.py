"""Hyperparameters of each method: typed, commented defaults; unknown keys fail.

Defaults follow the ROME paper's GPT-2 XL / GPT-J settings and EasyEdit's Llama settings,
adjusted where our measurements on the built-in models said so (docs/sweeps.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ROMEHyperParams(_Strict):
    # -- k*: the key, averaged over the bare prompt and prefixes sampled from the model
    n_prefixes: int = Field(10, ge=0, le=100)  # ROME: 10 prefixes of ~5 and ~10 tokens
    prefix_lengths: tuple[int, ...] = Field((5, 10), min_length=1)
    # -- v*: the value, found by gradient descent on δ added to the MLP output
    # Adam moves each coordinate by ~lr per step.  1.0 needs ~25% fewer steps than 0.5 (ROME's
    # GPT-J setting) to reach stop_loss, with the same metrics on 30 counterfact-dev cases per
    # built-in model (paired differences within ±0.02; docs/speed.md, "Edits").
    v_lr: float = Field(1.0, gt=0)
    v_steps: int = Field(25, ge=1, le=1000)
    v_weight_decay: float = Field(1e-3, ge=0)  # on ‖δ‖² / ‖v‖²
    clamp_norm_factor: float = Field(4.0, gt=0)  # ‖δ‖ ≤ factor · ‖v‖
    # KL(edited ‖ original) of the next-token distribution after the essence prompt "{} is a",
    # as the paper words it; ROME's code reads that distribution at the subject's last token instead
    kl_factor: float = Field(0.0625, ge=0)
    # KL on what the unedited model writes after the bare subject, this many tokens of it (every
    # position read), weighted by continuation_kl_factor (mean over its positions); 0 = off.
    # zsRE-zh on gemma3-270m, 16 tokens, paired with the default: fluency about the subject did not
    # move (+0.14 ± 0.42 bits at factor 2, 16 cases; −0.12 ± 0.35 at 0.5, 33 cases, chat +0.03 ± 0.13),
    # and at factor 2 reliability fell 0.20 (docs/chinese.md).  Off.
    continuation_kl_tokens: int = Field(0, ge=0, le=64)
    continuation_kl_factor: float = Field(0.5, ge=0)
    stop_loss: float = Field(5e-2, ge=0)  # early stop once the mean NLL of the target is below this
    # Same-subject locality (thesis §5): KL on the subject's other relations; 0 disables.
    locality_kl_factor: float = Field(0.0, ge=0)
    # Optimise through the chat template too (question -> answer prefix -> target).
    chat_template: bool = True
    # The chat row's answer begins as the unedited model begins it (the part of the prompt it
    # says itself after the question, editing.machinery.rows.answer_opening), and those opening
    # tokens are kept, not only the target learnt: a question-form prompt ("…的建筑师是谁？")
    # is otherwise repeated verbatim in the row, and the edit garbles the restatement in chat
    # (docs/chinese.md).  Where the model's answer does not follow the prompt at all, the row is
    # a direct answer (the transcript's lead, then the target).
    chat_opening: bool = True
    # The chat row's weight in the mean NLL of v* (the other rows weigh 1 each): with 11 prompt
    # rows beside it, the mean reaches stop_loss while the chat row, the hardest, still misses
    # tokens (NLL 0.3–1.2 at the end on zsRE-zh cases whose chat answer failed; docs/chinese.md).
    # With chat_opening, 100 cases each, against chat_opening=false chat_row_weight=1: zsRE-zh on
    # gemma3-270m chat 0.50 → 0.70 (+0.20 ± 0.09, paired), CounterFact 0.87 → 1.00 on gemma3-270m
    # and 0.90 → 0.99 on smollm2, the other metrics unchanged within noise.  The price: 18 steps
    # of v* instead of 8; Apply → "Edit applied" 7.2 → 12.0 s on gemma3-270m, 6.9 → 12.8 s on
    # smollm2 (docs/chinese.md, "The default since 2026-12-07"; docs/speed.md).
    chat_row_weight: float = Field(4.0, ge=0)
    # The weight shapes the steps, the plain mean decides when to stop: 13 steps instead of 18,
    # but chat −0.08 ± 0.09 (26 zsRE-zh cases, paired) and −0.04 ± 0.05 (51 CounterFact cases),
    # and the thesis's 韩杰才 example misses again ("崔渔").  Off.
    stop_on_plain_mean: bool = False
    # ... and not before the chat row's every token (opening, new fact) is the argmax under
    # teacher forcing (measured only together with chat_answer_end: 17 steps instead of 20).  Off.
    stop_when_chat_predicted: bool = False
    # The chat row's answer ends after the new fact ("张三的父亲是张大。"): the thesis's 张大 then
    # lands ("张大三" without), but its 韩杰才 turns into "韩杰强" with a looping neighbour
    # answer, and it costs 2 steps more.  Off.
    chat_answer_end: bool = False
    # Most-probable early stopping (MPES; Gupta et al., "Lifelong Knowledge Editing requires
    # Better Regularization", EMNLP Findings 2025): v* also stops as soon as every target token
    # of every row (the chat row's included) is the argmax under teacher forcing — δ stops
    # growing once the fact is said, instead of driving the NLL to stop_loss.  A probe on three
    # zsRE-zh cases (gemma3-270m): 13 → 9 and 19 → 13 steps where every row gets predicted, the
    # cap (25) either way where one row never is; the same chat answers; the subject's
    # continuations flood as before (docs/chinese.md).  Not measured at scale: off.
    stop_when_all_predicted: bool = False
    # -- the rank-one update
    covariance: bool = True  # False: C = I (what EasyEdit ships for Llama)
    # tokens of corpus text behind C (the paper: 100k Wikipedia samples; sampling them from
    # the model on a 2-core CPU runs at ~200 tokens/s, so the offline default is smaller)
    mom2_n_tokens: int = Field(20_000, ge=1)
    # "r-rome" (Gupta et al. 2024): one key k* everywhere; "original": the numerator's key
    # is the bare prompt's while the denominator's is the averaged one (collapses when sequential).
    update_rule: Literal["r-rome", "original"] = "r-rome"
    # run each step only from the subject's last token on (prefix in a KV cache); False: whole rows
    fast_upper_layers: bool = True
    # write over this many layers, the edit layer and those below it (MEMIT's spreading,
    # editing.methods.rome.compute_rome_spread); 1 = ROME's one layer
    spread: int = Field(1, ge=1, le=16)
    # -- what the update preserves besides C₀ (editing.machinery.preservation; docs/lifelong.md)
    # λ_h: the keys earlier applied edits at this layer wrote; 0 = each edit as if it were the only
    # one (plain r-ROME).  1 keeps an earlier key's output to ~1/(1 + d) of the leak plain r-ROME
    # gives it; over 50 sequential CounterFact edits on smollm2 it raised paraphrase 0.95 → 0.99,
    # generalization 0.60 → 0.71 and fluency 3.86 → 4.10 bits (unedited 4.24) at equal locality
    # (docs/lifelong.md); a single edit, with no history, is unchanged.
    history_weight: float = Field(1.0, ge=0)
    # λ_s: the keys of the subject's other relations (editing.machinery.relations); 0 = off
    same_subject_weight: float = Field(0.0, ge=0)
    same_subject_prompts: int = Field(8, ge=0, le=20)  # how many relation templates (both λ_s and the KL)
    # λ_n: the keys of other well-known subjects in the edit's own prompt (ROME's bleedover); 0 = off
    other_subjects_weight: float = Field(0.0, ge=0)
    other_subjects: int = Field(60, ge=0, le=200)  # how many of editing.machinery.relations.OTHER_SUBJECTS
    # a same-subject key at least this parallel to k* is not preserved (it cannot be while k* changes)
    same_subject_max_cosine: float = Field(0.95, gt=0, le=1)
    # ρ: ridge on the preserved moment, in units of C₀'s mean eigenvalue
    ridge: float = Field(0.0, ge=0)
    # NAS (2026): rescale v* to the norm of the value it replaces
    rescale_value_norm: bool = False

    @field_validator("prefix_lengths")
    @classmethod
    def _positive(cls, lengths: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 1 or n > 100 for n in lengths):
            raise ValueError("prefix lengths must be 1 to 100 tokens")
        return lengths


class FTHyperParams(_Strict):
    # ε of the L∞ ball around W₀, as a fraction of the edited projection's mean |W₀|: every
    # weight may move by at most this share of a typical weight.  An absolute ε does not carry
    # across models: 5e-3 is 3.5% of smollm2's weights (mean |W| 0.145 at layer 4) but 40% of
    # gemma3-270m's (0.012), where it broke locality (docs/sweeps.md: FT's radius).
    # 0.035 keeps smollm2's ε.
    relative_norm_constraint: float = Field(0.035, gt=0)
    # an absolute ε instead (EasyEdit: 5e-4 on GPT-2 XL; it never reached the target here)
    norm_constraint: float | None = Field(None, gt=0)
    # Adam moves each weight by ~lr per step; None: ε/2, which reaches the ball's surface in two steps
    lr: float | None = Field(None, gt=0)
    # No momentum (β1 = 0): at the ball's surface momentum keeps pushing clamped weights outward
    # and turns late when a gradient changes sign; without it the median edit on smollm2 needs
    # 5.5 steps instead of 10 (10 counterfact-dev cases, docs/speed.md, "Edits").
    adam_betas: tuple[float, float] = (0.0, 0.9)
    steps: int = Field(40, ge=1, le=1000)
    stop_loss: float = Field(5e-2, ge=0)
    # also stop once every target token is the argmax on every training prompt (ε rarely
    # lets the NLL reach stop_loss on the built-in models)
    stop_when_predicted: bool = True
    # Each step's forward and backward under bfloat16 autocast (ΔW, W₀ and Adam stay fp32); None:
    # where the hardware does bf16 arithmetic (editing.methods.ft.fast_bf16).  Adam without momentum moves
    # each weight by the sign of its gradient, mostly, and bf16 keeps the signs: paired over 100
    # counterfact-dev cases on gemma3-270m every metric stayed within noise (chat +0.03 ± 0.03,
    # locality −0.003 ± 0.006); 2.1 → 1.7–1.8 s per edit on this machine's Zen 4 cores.
    bf16_autocast: bool | None = None
    chat_template: bool = True
    chat_opening: bool = False  # as ROME's: the chat row's answer opens as the model opens it
    # Run the chat row from its subject on, its preamble held at W₀'s keys and values (editing.methods.ft):
    # 1.45 s instead of 2.1 s per edit on gemma3-270m, whose chat form carries a few-shot
    # transcript, but chat success fell by 0.12 ± 0.09 (100 counterfact-dev cases, paired): part
    # of what makes FT's edit show in a chat answer acts through the preamble.  Off by default.
    hold_chat_preamble: bool = False
    n_prefixes: int = Field(0, ge=0, le=100)  # FT-L trains on the bare prompt (and its chat form)

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("Adam's betas must each be in [0, 1)")
        return betas


class KNHyperParams(_Strict):
    """Knowledge neurons (editing.methods.kn): the paper's settings unless said otherwise."""

    steps: int = Field(20, ge=1, le=200)  # m, the Riemann steps of the integrated gradient
    threshold: float = Field(0.2, gt=0, le=1)  # t: a neuron counts on a prompt at ≥ t × that prompt's max
    share: float = Field(0.7, gt=0, le=1)  # p: ... and is a knowledge neuron when it counts on ≥ p of the prompts
    wanted_neurons: tuple[int, int] = (2, 5)  # p moves by 0.05 (≤ 6 times) until this many remain
    lambda_old: float = Field(1.0, ge=0)  # λ₁: how much of the old object's direction is taken out of a slot
    lambda_new: float = Field(8.0, ge=0)  # λ₂: how much of the new object's direction is put in
    # the fact's prompts: the bare prompt, this many prefixes sampled from the model, the chat form
    n_prefixes: int = Field(4, ge=0, le=20)
    chat_template: bool = True
    chat_opening: bool = False  # as ROME's: the chat prompt ends where the model's own answer would name the object
    layers: tuple[int, ...] | None = None  # which layers' neurons are attributed; None: all
    layers_per_pass: int = Field(8, ge=1)  # layers whose m scaled copies run as one batch
    # neurons that stand out for the relation, not the fact, are left out (the paper's code: found in
    # > 10% of a relation's facts): the same prompt about this many other subjects ...
    relation_samples: int = Field(3, ge=0, le=20)
    common_share: float = Field(0.3, ge=0, le=1)  # ... a neuron kept on more than this share of them is common


HPARAMS = {"rome": ROMEHyperParams, "ft": FTHyperParams, "kn": KNHyperParams}


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["v_lr=1.0", "chat_template=false"]`` -> ``{"v_lr": 1.0, "chat_template": False}``: values
    are read as JSON where they parse as JSON, else kept as text; pydantic checks the keys and types."""
    import json

    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def cli_overrides(method: str, pairs: list[str] | None, no_covariance: bool = False) -> dict:
    """The overrides the command lines' ``--set KEY=VALUE`` and ``--no-covariance`` ask for."""
    overrides = parse_overrides(pairs)
    if no_covariance and method == "rome":
        overrides["covariance"] = False
    return overrides


def hparams_for(method: str, overrides: dict | None = None) -> ROMEHyperParams | FTHyperParams | KNHyperParams:
    try:
        cls = HPARAMS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(HPARAMS)}") from None
    return cls(**(overrides or {}))
