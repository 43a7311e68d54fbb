"""Mechanics of the editing engine on tiny random llama, qwen2 and gpt2 models."""

from __future__ import annotations

import pytest
import torch

from editing.delta import DeltaStack, WeightDelta
from editing.engine import Editor
from editing.errors import LayerOutOfRange, UnsupportedArchitecture
from editing.hparams import ROMEHyperParams
from editing.machinery.hooks import Trace, TraceDict
from editing.methods.rome import compute_rome_delta
from editing.request import EditRequest
from editing.spec import spec_for

REQUEST = EditRequest(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")
FAST = {"covariance": False, "n_prefixes": 2, "v_steps": 4, "chat_template": False}


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, saved) -> bool:
    return all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def editor(model, tokenizer, tmp_path) -> Editor:
    return Editor(model, tokenizer, stats_dir=tmp_path / "stats", default_layer=1)


def test_rank_one_identity_and_model_untouched(tiny, tokenizer, tmp_path):
    """Ŵ k* = v* for the r-ROME update, and computing leaves the model bit-identical."""
    spec = spec_for(tiny)
    templates = editor(tiny, tokenizer, tmp_path).templates("en", 2, (5, 10))
    before = state(tiny)
    res = compute_rome_delta(tiny, tokenizer, REQUEST, ROMEHyperParams(**FAST), spec, 1,
                             templates=templates, covariance=None)
    assert same_state(tiny, before), "compute_rome_delta must leave the model bit-identical"
    assert res.delta.kind == "rank_one" and res.delta.norm() > 0
    DeltaStack(tiny).apply(res.delta)
    module = tiny.get_submodule(spec.mlp_out_at(1))
    with torch.no_grad():
        torch.testing.assert_close(module(res.key[None])[0], res.value, rtol=1e-4, atol=1e-4)


def test_rank_one_identity_with_covariance(tokenizer, tmp_path):
    from conftest import make_tiny

    model = make_tiny("llama", len(tokenizer))
    ed = editor(model, tokenizer, tmp_path)
    spec = spec_for(model)
    texts = iter(["The quick brown fox jumps over the lazy dog. " * 4] * 100)
    from editing.machinery.covariance import collect_key_moment

    moment, used = collect_key_moment(model, tokenizer, spec, 1, texts, 2000)
    assert used == 2000 and moment.shape == (64, 64)
    moment = moment + 1e-3 * torch.eye(64)
    res = compute_rome_delta(model, tokenizer, REQUEST, ROMEHyperParams(**FAST), spec, 1,
                             templates=ed.templates("en", 2, (5, 10)), covariance=moment)
    module = model.get_submodule(spec.mlp_out_at(1))
    DeltaStack(model).apply(res.delta)
    with torch.no_grad():
        torch.testing.assert_close(module(res.key[None])[0], res.value, rtol=1e-4, atol=1e-4)


def test_original_update_rule_maps_bare_key(tokenizer, tmp_path):
    from conftest import make_tiny

    model = make_tiny("llama", len(tokenizer))
    spec = spec_for(model)
    ed = editor(model, tokenizer, tmp_path)
    templates = ed.templates("en", 2, (5, 10))
    r = compute_rome_delta(model, tokenizer, REQUEST, ROMEHyperParams(**FAST), spec, 1,
                           templates=templates, covariance=None)
    o = compute_rome_delta(model, tokenizer, REQUEST, ROMEHyperParams(**FAST, update_rule="original"), spec, 1,
                           templates=templates, covariance=None)
    # same direction (C⁻¹k*), different scale: the two rules differ only in the denominator's key
    cos = torch.nn.functional.cosine_similarity(r.delta.tensors["v"], o.delta.tensors["v"], dim=0)
    assert cos > 0.9999
    assert not torch.allclose(r.delta.tensors["u"], o.delta.tensors["u"])


def test_apply_revert_exact_and_middle_revert(tiny, tokenizer, tmp_path):
    ed = editor(tiny, tokenizer, tmp_path)
    before = state(tiny)
    deltas = []
    for target in ("Rome", "Berlin", "Madrid"):
        req = REQUEST.model_copy(update={"target_new": target})
        deltas.append(ed.compute(req, "rome", 1, FAST).delta)
    stack = DeltaStack(tiny)
    for d in deltas:
        stack.apply(d)
    assert not same_state(tiny, before)
    stack.revert(deltas[1].id)
    param = tiny.get_parameter(deltas[0].param)
    expected = (before[deltas[0].param].float() + deltas[0].matrix() + deltas[2].matrix()).to(param.dtype)
    assert torch.equal(param, expected), "reverting the middle delta leaves exactly the other two"
    stack.revert_all()
    assert same_state(tiny, before), "apply then revert restores the weights bit for bit"


def test_bf16_revert_is_exact(tokenizer, tmp_path):
    from conftest import make_tiny

    model = make_tiny("llama", len(tokenizer)).to(torch.bfloat16)
    before = state(model)
    delta = WeightDelta(param="model.layers.1.mlp.down_proj.weight", kind="rank_one",
                        tensors={"u": torch.randn(32), "v": torch.randn(64)})
    stack = DeltaStack(model)
    stack.apply(delta)
    stack.revert(delta.id)
    assert same_state(model, before)


@pytest.mark.parametrize("bf16", [False, True])
def test_ft_delta_respects_linf_ball(tiny, tokenizer, tmp_path, bf16):
    """Also with the steps under bf16 autocast: ΔW and W₀ stay fp32, the model untouched."""
    before = state(tiny)
    outcome = editor(tiny, tokenizer, tmp_path).compute(
        REQUEST, "ft", 1, {"steps": 5, "norm_constraint": 1e-3, "chat_template": False, "lr": 1e-2,
                           "bf16_autocast": bf16})
    assert same_state(tiny, before)
    assert outcome.delta.kind == "dense" and outcome.delta.meta["bf16_autocast"] is bf16
    assert outcome.delta.tensors["delta"].dtype == torch.float32
    assert outcome.delta.tensors["delta"].abs().max() <= 1e-3 + 1e-9
    assert outcome.losses[-1] < outcome.losses[0]


def test_ft_radius_is_relative_to_the_weights(tiny, tokenizer, tmp_path):
    """By default ε is a fraction of the projection's mean |W₀|, so it means the same on models
    whose weights differ in scale; scaling W₀ scales the ball with it."""
    from editing.spec import mlp_weight, spec_for

    weight = mlp_weight(tiny, 1, spec_for(tiny))
    settings = {"steps": 3, "chat_template": False, "relative_norm_constraint": 0.05}
    radii = []
    for scale in (1.0, 10.0):
        with torch.no_grad():
            weight.mul_(scale)
        outcome = editor(tiny, tokenizer, tmp_path).compute(REQUEST, "ft", 1, settings)
        radius = 0.05 * weight.abs().mean().item()
        assert outcome.delta.meta["radius"] == pytest.approx(radius)
        assert outcome.delta.tensors["delta"].abs().max() <= radius * (1 + 1e-6)
        radii.append(radius)
    assert radii[1] == pytest.approx(10 * radii[0])


def test_ft_holding_the_chat_preamble_starts_from_the_exact_loss(tiny, tokenizer, tmp_path):
    """FT may hold the chat row's tokens before its subject at W₀'s keys and values: that changes
    how ΔW is seen, not where FT starts (ΔW = 0: the first loss is the exact one), and the next
    edit takes the preamble from the prefix cache."""
    def chat(question: str) -> str:
        return f"You answer questions about places in one short sentence. Q: {question} A:"

    ed = Editor(tiny, tokenizer, stats_dir=tmp_path / "stats", default_layer=1, chat_prompt=chat)
    settings = {"steps": 3, "norm_constraint": 1e-3, "lr": 1e-3, "bf16_autocast": False}
    exact = ed.compute(REQUEST, "ft", 1, {**settings, "hold_chat_preamble": False})
    assert ed.prefix_cache.hits + ed.prefix_cache.misses == 0  # whole rows: nothing cached
    held = ed.compute(REQUEST, "ft", 1, {**settings, "hold_chat_preamble": True})
    assert held.losses[0] == pytest.approx(exact.losses[0], rel=1e-5)
    assert held.delta.tensors["delta"].abs().max() <= 1e-3 + 1e-9
    hits = ed.prefix_cache.hits
    other = EditRequest(prompt="The Colosseum is located in the city of", subject="Colosseum", target_new="Paris")
    ed.compute(other, "ft", 1, {**settings, "hold_chat_preamble": True})
    assert ed.prefix_cache.hits > hits


def _record_rows_predicted(monkeypatch) -> list[torch.Tensor]:
    """After every call of ROME's objective from now on, its ``rows_predicted`` (one bool per
    rewrite row: every target token is the argmax), appended to the returned list."""
    from editing.machinery import objective as objective_module

    seen: list[torch.Tensor] = []
    call = objective_module.Objective.__call__

    def recording(self):
        out = call(self)
        seen.append(self.rows_predicted.clone())
        return out

    monkeypatch.setattr(objective_module.Objective, "__call__", recording)
    return seen


def test_rome_can_stop_only_once_the_chat_row_is_predicted(tokenizer, tmp_path, monkeypatch):
    """``stop_when_chat_predicted``: the mean's stop test alone ends v*'s search at once here
    (stop_loss is huge); with the option it goes on until every token of the chat row (its
    opening and the new fact) is the argmax, the answer greedy decoding gives."""
    from conftest import make_tiny

    seen = _record_rows_predicted(monkeypatch)
    tiny = make_tiny("llama", len(tokenizer))  # (a random qwen2's logits barely move even so)
    ed = Editor(tiny, tokenizer, stats_dir=tmp_path / "stats", default_layer=1,
                chat_prompt=lambda question: question)
    # a direct answer (" Rome") right after the question's subject, which δ reaches at once
    request = REQUEST.model_copy(update={"answer_opening": " ", "question": "Tell me about the Eiffel Tower"})
    settings = {"covariance": False, "n_prefixes": 2, "v_steps": 60, "stop_loss": 1e6, "chat_row_weight": 4.0,
                "clamp_norm_factor": 100.0}  # a random model's logits move only with a large δ
    assert len(ed.compute(request, "rome", 1, settings).losses) == 1
    assert not bool(seen[0][-1])  # the random model does not say the row before the edit
    seen.clear()
    steps = len(ed.compute(request, "rome", 1, {**settings, "stop_when_chat_predicted": True}).losses)
    assert 1 < steps < 60 and bool(seen[-1][-1]) and not any(bool(s[-1]) for s in seen[:-1])


def test_rome_most_probable_early_stopping(tokenizer, tmp_path, monkeypatch):
    """``stop_when_all_predicted`` (MPES): with a stop loss never reached, v*'s search runs to the
    step cap; with the option it ends at the first step where every row's target is the argmax."""
    from conftest import make_tiny

    seen = _record_rows_predicted(monkeypatch)
    tiny = make_tiny("llama", len(tokenizer))
    ed = Editor(tiny, tokenizer, stats_dir=tmp_path / "stats", default_layer=1)
    # the subject last, where δ lands: a random model's prediction moves at once
    request = EditRequest(prompt="The city that holds the Eiffel Tower", subject="Eiffel Tower", target_new="Rome")
    settings = {"covariance": False, "n_prefixes": 2, "v_steps": 40, "stop_loss": 0.0, "chat_template": False,
                "clamp_norm_factor": 100.0}  # a random model's logits move only with a large δ
    assert len(ed.compute(request, "rome", 1, settings).losses) == 40
    assert not bool(seen[0].all())  # the random model does not say it before the edit
    seen.clear()
    steps = len(ed.compute(request, "rome", 1, {**settings, "stop_when_all_predicted": True}).losses)
    assert 1 < steps < 40 and bool(seen[-1].all()) and not any(bool(s.all()) for s in seen[:-1])


def test_delta_save_load_roundtrip(tiny, tokenizer, tmp_path):
    outcome = editor(tiny, tokenizer, tmp_path).compute(REQUEST, "rome", 1, FAST)
    path = tmp_path / "d.safetensors"
    digest = outcome.delta.save(path)
    loaded = WeightDelta.load(path, expected_sha256=digest)
    assert loaded.id == outcome.delta.id and loaded.param == outcome.delta.param
    assert torch.equal(loaded.matrix(), outcome.delta.matrix())
    assert loaded.meta["request"]["target_new"] == "Rome"
    path.write_bytes(path.read_bytes()[:-4] + b"xxxx")
    from editing.errors import DeltaMismatch

    with pytest.raises(DeltaMismatch):
        WeightDelta.load(path, expected_sha256=digest)


def test_hooks_removed_after_exception(tiny):
    spec = spec_for(tiny)
    module = tiny.get_submodule(spec.mlp_out_at(0))
    with pytest.raises(RuntimeError):
        with TraceDict(tiny, [spec.mlp_out_at(0), spec.mlp_out_at(1)]):
            raise RuntimeError("boom")
    assert not module._forward_hooks and not module._forward_pre_hooks


def test_trace_stop_and_tuple_outputs(tiny):
    spec = spec_for(tiny)
    x = torch.tensor([[1, 2, 3, 4]])
    with Trace(tiny, spec.layer(1), stop=True) as t:  # decoder blocks may return tuples
        tiny(input_ids=x)
    assert t.output.shape == (1, 4, 32)
    with Trace(tiny, spec.layer(1), edit_output=lambda out, _p: out * 0):
        zeroed = tiny(input_ids=x).logits
    assert not torch.allclose(zeroed, tiny(input_ids=x).logits)


def test_hooks_act_only_in_the_thread_that_installed_them(tiny):
    """A pass in another thread (a chat answer beside an edit) goes through untouched: no edited
    output, no recording, no StopForward."""
    import threading

    spec = spec_for(tiny)
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        clean = tiny(input_ids=x).logits
    seen = {}

    def other_thread():
        with torch.no_grad():
            seen["logits"] = tiny(input_ids=x).logits

    with Trace(tiny, spec.layer(1), edit_output=lambda out, _p: out * 0, stop=True) as t:
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert t.output is None, "the other thread's pass was recorded"
        tiny(input_ids=x)  # this thread's pass: edited, recorded, stopped
    assert torch.equal(seen["logits"], clean)
    assert t.output is not None and not t.output.any()


def test_a_check_that_fails_switches_no_fast_path_off(tokenizer, tmp_path, monkeypatch):
    """Only a comparison of results records a verdict: an exception during the check (here: an
    interrupted pass) makes that edit use whole rows and leaves the next edit on the fast path."""
    from conftest import make_tiny

    import editing.machinery.suffix

    model = make_tiny("llama", len(tokenizer))
    ed = editor(model, tokenizer, tmp_path)

    def interrupted(self):
        raise RuntimeError("interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(editing.machinery.suffix.SuffixStack, "_matches_full_pass", interrupted)
        ed.compute(REQUEST, "rome", 1, FAST)
    assert ed.checks.suffix == {}
    ed.compute(REQUEST, "rome", 1, FAST)
    assert ed.checks.suffix == {True: True} and ed.checks.replay[True]


def test_k_star_is_the_same_on_the_first_edit_of_a_model(tokenizer, tmp_path):
    """The first edit compares the layer replay with a full pass (the edit layer runs twice);
    its k*, and so its delta, equals a later edit's bit for bit."""
    from conftest import make_tiny

    model = make_tiny("llama", len(tokenizer))
    ed = editor(model, tokenizer, tmp_path)
    first = ed.compute(REQUEST, "rome", 1, FAST).delta
    ed.invalidate()
    second = ed.compute(REQUEST, "rome", 1, FAST).delta
    assert all(torch.equal(first.tensors[k], second.tensors[k]) for k in first.tensors)


def test_layer_out_of_range_and_unknown_architecture(tiny, tokenizer, tmp_path):
    with pytest.raises(LayerOutOfRange):
        editor(tiny, tokenizer, tmp_path).compute(REQUEST, "rome", 99, FAST)
    tiny.config.model_type = "mystery"
    with pytest.raises(UnsupportedArchitecture, match="mystery"):
        spec_for(tiny)


def _suffix_rows(tokenizer):
    from editing.machinery.tokens import encode

    texts = ["The Eiffel Tower is located in the city of", "A short one. The Eiffel Tower is in",
             "Eiffel Tower", "Some much longer context about towers and cities. Then: The Eiffel Tower is"]
    rows = [encode(tokenizer, t) for t in texts]
    starts = [len(rows[0]) - 4, len(rows[1]) - 3, 0, len(rows[3]) - 2]  # one row runs whole
    return rows, starts


def _check_suffix_stack(model, tokenizer, copies: int = 1, shift: int = 0, prefix_cache=None):
    """The packed, prefix-cached pass gives the full pass's hidden states at every run position
    (``shift``: each cached prefix one token longer than ``_suffix_rows`` says)."""
    from editing.machinery.forward import last_hidden, same_result
    from editing.machinery.suffix import SuffixStack
    from editing.machinery.tokens import pad_batch, pad_id

    spec = spec_for(model)
    rows, starts = _suffix_rows(tokenizer)
    starts = [s + shift if s else 0 for s in starts]
    rows, starts = rows * copies, starts * copies
    stack = SuffixStack(model, spec, 1, rows, starts, pad_id(tokenizer), torch.device("cpu"), prefix_cache)
    assert stack.available and stack._upper is not None and stack._upper.fast
    full = pad_batch(rows, pad_id(tokenizer), torch.device("cpu"))
    with torch.no_grad():
        reference = last_hidden(model, spec, input_ids=full.input_ids, attention_mask=full.attention_mask)
        packed = stack.hidden()[0]
    for i, (row, start) in enumerate(zip(rows, starts)):
        got = packed[[stack.place(i, p) for p in range(start, len(row))]]
        assert same_result(got, reference[i, start : len(row)]), f"row {i} differs"  # ‖Δ‖ ≤ 1e-5 ‖h‖


def test_prefix_cached_pass_matches_full_pass(tiny, tokenizer):
    _check_suffix_stack(tiny, tokenizer)


def test_prefixes_reused_from_an_earlier_pass_match_full_pass(tiny, tokenizer):
    """Prefixes served by the prefix cache (whole, or extended by the tokens a row adds)."""
    from editing.machinery.suffix import PrefixCache

    cache = PrefixCache(min_shared=2)
    _check_suffix_stack(tiny, tokenizer, prefix_cache=cache)
    assert cache.misses == 3 and cache.hits == 0
    _check_suffix_stack(tiny, tokenizer, prefix_cache=cache)  # every prefix known
    _check_suffix_stack(tiny, tokenizer, shift=1, prefix_cache=cache)  # known + one more token each
    assert cache.hits == 6


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_prefix_cached_pass_matches_full_pass_builtin(name, request):
    from editing.machinery.suffix import PrefixCache

    loaded = request.getfixturevalue(name)
    cache = PrefixCache()
    # 24 copies: ~700 cached prefix tokens in all, past gemma's 512-token sliding window
    _check_suffix_stack(loaded.model, loaded.tokenizer, copies=24, prefix_cache=cache)
    _check_suffix_stack(loaded.model, loaded.tokenizer, copies=24, shift=1, prefix_cache=cache)
    assert cache.hits >= 24


def test_prefix_cache_gives_the_same_delta_and_empties_when_weights_change(tiny, tokenizer, tmp_path):
    from editing.machinery.suffix import PrefixCache

    spec = spec_for(tiny)
    templates = editor(tiny, tokenizer, tmp_path).templates("en", 3, (5, 10))
    hparams = ROMEHyperParams(**FAST)
    cache = PrefixCache(min_shared=2)
    first = EditRequest(prompt="The Colosseum is located in the city of", subject="Colosseum", target_new="Paris")
    compute_rome_delta(tiny, tokenizer, first, hparams, spec, 1, templates=templates, covariance=None,
                       prefix_cache=cache)
    warm = compute_rome_delta(tiny, tokenizer, REQUEST, hparams, spec, 1, templates=templates, covariance=None,
                              prefix_cache=cache)
    assert cache.hits >= 3  # the sampled contexts were run by the first edit
    cold = compute_rome_delta(tiny, tokenizer, REQUEST, hparams, spec, 1, templates=templates, covariance=None)
    for name in ("u", "v"):
        torch.testing.assert_close(warm.delta.tensors[name], cold.delta.tensors[name], rtol=1e-4, atol=1e-6)
    stack = DeltaStack(tiny)
    stack.apply(warm.delta)  # other weights: nothing stored before may be served
    try:
        assert cache.longest(tiny, [0, 1, 2])[1] is None and not cache._entries
    finally:
        stack.revert(warm.delta.id)


def test_rome_fast_path_computes_the_same_delta(tiny, tokenizer, tmp_path):
    """Running only from the subject on (prefix cache + upper layers) changes speed, not the edit."""
    spec = spec_for(tiny)
    templates = editor(tiny, tokenizer, tmp_path).templates("en", 2, (5, 10))
    results = [
        compute_rome_delta(tiny, tokenizer, REQUEST, ROMEHyperParams(**FAST, fast_upper_layers=fast), spec, 1,
                           templates=templates, covariance=None)
        for fast in (True, False)
    ]
    assert results[0].fast_path and not results[1].fast_path
    for name in ("u", "v"):
        torch.testing.assert_close(results[0].delta.tensors[name], results[1].delta.tensors[name],
                                   rtol=1e-3, atol=1e-5)


def test_packed_whole_rows_objective_matches_padded_buckets(tiny, tokenizer):
    """FT's objective: all rows packed into one pass (no cache) scores as padded buckets do."""
    from editing.machinery.objective import Objective
    from editing.machinery.rows import build_rows
    from editing.machinery.suffix import SuffixStack

    templates = ["{}", "A short sentence. {}", "Something else entirely, and a much longer prefix. {}"]
    rows = build_rows(tokenizer, REQUEST, templates, chat_prompt=None)
    spec = spec_for(tiny)
    packed, padded = (Objective(tiny, tokenizer, spec, 1, rows.rewrite, rows.kl, fast=fast) for fast in (True, False))
    assert isinstance(packed.buckets[0].stack, SuffixStack) and len(padded.buckets) >= 1
    with torch.no_grad():
        (a, kl_a), (b, kl_b) = packed(), padded()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kl_a, kl_b, rtol=1e-4, atol=1e-5)


def test_continuation_kl_row_reads_every_position_and_starts_at_zero(tiny, tokenizer):
    """The subject-continuation KL row is read at each of its positions, in ROME's packed pass as in
    padded buckets, and an edit with it still writes its value (KL is zero at δ = 0)."""
    from editing.machinery.objective import Objective
    from editing.machinery.probe import greedy_completion
    from editing.machinery.rows import build_rows

    after = greedy_completion(tiny, tokenizer, REQUEST.subject, 6)
    assert build_rows(tokenizer, REQUEST, ["{}"], chat_prompt=None, after_subject=after,
                      locality_prompts=[f"{REQUEST.subject} was born in"]).kl_kinds == \
        ("essence", "continuation", "same_subject")
    rows = build_rows(tokenizer, REQUEST, ["{}", "A short sentence. {}"], chat_prompt=None, after_subject=after)
    assert rows.kl_kinds == ("essence", "continuation")
    n_after = len(tokenizer(after, add_special_tokens=False).input_ids)
    spec = spec_for(tiny)
    packed, padded = (Objective(tiny, tokenizer, spec, 1, rows.rewrite, rows.kl, from_subject=True, fast=fast)
                      for fast in (True, False))
    assert packed.kl_row.tolist() == [0] + [1] * n_after
    with torch.no_grad():
        (_, kl_a), (_, kl_b) = packed(), padded()
    assert kl_a.shape[0] == 1 + n_after
    torch.testing.assert_close(kl_a, kl_b, rtol=1e-4, atol=1e-5)
    with_row, without = (compute_rome_delta(tiny, tokenizer, REQUEST, ROMEHyperParams(**FAST, continuation_kl_tokens=n),
                                            spec, 1, templates=["{}"], covariance=None) for n in (6, 0))
    assert with_row.losses[0] == pytest.approx(without.losses[0], rel=1e-5)  # δ = 0: no KL yet
    assert with_row.losses[1:] != without.losses[1:]  # and then the row pulls
    same_subject = compute_rome_delta(tiny, tokenizer, REQUEST, ROMEHyperParams(**FAST, locality_kl_factor=1.0), spec, 1,
                                      templates=["{}"], covariance=None, locality_prompts=["Eiffel Tower was built in"])
    assert same_subject.losses[0] == pytest.approx(without.losses[0], rel=1e-5)
    assert same_subject.losses[1:] != without.losses[1:]


def test_sampling_is_seeded_exact_length_and_leaves_global_rng(tiny, tokenizer):
    from editing.machinery.context import sample_texts

    state_before = torch.random.get_rng_state()
    first = sample_texts(tiny, tokenizer, language="en", n=3, new_tokens=6, seed=7, top_k=40)
    assert torch.equal(torch.random.get_rng_state(), state_before)
    assert sample_texts(tiny, tokenizer, language="en", n=3, new_tokens=6, seed=7, top_k=40) == first
    assert sample_texts(tiny, tokenizer, language="en", n=3, new_tokens=6, seed=8, top_k=40) != first
    for text, word in zip(first, ("The", "Therefore", "Because")):
        assert text.startswith(word)
        added = tokenizer(text, add_special_tokens=False).input_ids[len(tokenizer(word, add_special_tokens=False).input_ids):]
        assert 4 <= len(added) <= 8  # 6 sampled tokens (re-tokenising the text may merge a few)


def test_weights_change_only_between_statistics_passes(tokenizer, tmp_path):
    """Key statistics computed in the background are never a mix of two sets of weights:
    a change of the weights waits until the computation holding the cache's lock is done."""
    import threading

    from conftest import make_tiny

    ed = editor(make_tiny("llama", len(tokenizer)), tokenizer, tmp_path)
    changed = threading.Event()

    def change():
        with ed.changing_weights():
            changed.set()

    with ed.covariance.lock:  # what a background statistics pass holds
        worker = threading.Thread(target=change)
        worker.start()
        assert not changed.wait(0.3), "the weights changed while statistics were being computed"
    assert changed.wait(10)
    worker.join()
