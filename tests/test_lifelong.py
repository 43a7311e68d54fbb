"""Lifelong editing mechanics on tiny random models: the preserving solve, the history kept
with the applied deltas, superseding and rebasing, and many facts written in one solve."""

from __future__ import annotations

import pytest
import torch

from editing.delta import DeltaStack, WeightDelta
from editing.engine import Editor
from editing.errors import KeysTooClose
from editing.machinery.preservation import PreservedKeys, solve_write
from editing.request import EditRequest
from editing.spec import spec_for

FAST = {"covariance": False, "n_prefixes": 2, "v_steps": 4, "chat_template": False}
PRESERVE = {**FAST, "history_weight": 1.0}
FACTS = [
    EditRequest(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
    EditRequest(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux", target_new="English"),
    EditRequest(prompt="Toyota Camry is produced by", subject="Toyota Camry", target_new="Honda"),
]


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def outputs(model, delta: WeightDelta) -> torch.Tensor:
    """What the edited matrix gives now at the keys ``delta`` wrote: (n, d_out)."""
    module = model.get_submodule(delta.param.removesuffix(".weight"))
    with torch.no_grad():
        return module(delta.keys.to(next(model.parameters()).dtype))


def make_editor(model, tokenizer, tmp_path) -> Editor:
    return Editor(model, tokenizer, stats_dir=tmp_path / "stats", default_layer=1)


def test_solve_writes_every_key_and_keeps_the_preserved_ones():
    """Δ K = R exactly, and a preserved key's output moves by a small fraction of what it would
    without being preserved (λ = 1: Sherman–Morrison's 1 / (1 + λ kᵀC⁻¹k))."""
    torch.manual_seed(0)
    d_in, d_out = 48, 16
    basis = torch.randn(4 * d_in, d_in)
    moment = basis.T @ basis / len(basis)  # C₀ of some keys
    kept, keys = torch.randn(5, d_in), torch.randn(3, d_in)
    residuals = torch.randn(3, d_out)
    u, v = solve_write(PreservedKeys(moment, history=kept, history_weight=1.0), keys, residuals)
    delta = u.T @ v  # (d_out, d_in)
    torch.testing.assert_close(delta @ keys.T, residuals.T, rtol=1e-4, atol=1e-4)
    u0, v0 = solve_write(PreservedKeys(moment), keys, residuals)
    leak, leak_unpreserved = (delta @ kept.T).norm(), ((u0.T @ v0) @ kept.T).norm()
    assert leak < 0.02 * leak_unpreserved, (leak, leak_unpreserved)


def drifts(model, editor: Editor, hparams: dict) -> list[float]:
    """Three edits in a row; how far each of the first two has drifted from the value it wrote,
    as a share of the change it made, once all three are in."""
    deltas = []
    for request in FACTS:
        delta = editor.compute(request, "rome", 1, hparams).delta
        editor.stack.apply(delta)
        torch.testing.assert_close(outputs(model, delta), delta.tensors["values"], rtol=1e-3, atol=1e-4)
        deltas.append(delta)
    shares = []
    for earlier in deltas[:2]:
        u, v = earlier.factors()
        change = (u.T @ (v @ earlier.keys.T)).T  # what the earlier edit wrote: v* − W k*
        shares.append(float((outputs(model, earlier) - earlier.tensors["values"]).norm() / change.norm()))
    editor.stack.revert_all()
    return shares


def test_sequential_edits_keep_the_earlier_ones(tiny, tokenizer, tmp_path):
    """Each preserving edit writes v* at its k*; after the third, the first two still give their
    v* to within 5% of the change they made (λ = 1, d_in = 64: about 1 / (1 + 64)), and at most a
    fifth of what they drift under plain r-ROME."""
    ed = make_editor(tiny, tokenizer, tmp_path)
    preserved, plain = drifts(tiny, ed, PRESERVE), drifts(tiny, ed, {**FAST, "history_weight": 0.0})
    for kept, moved in zip(preserved, plain):
        assert kept < 0.05 and kept < moved / 5, (preserved, plain)


def test_reverting_the_middle_edit_restores_the_others_and_forgets_its_keys(tiny, tokenizer, tmp_path):
    ed = make_editor(tiny, tokenizer, tmp_path)
    before = state(tiny)
    deltas = []
    for request in FACTS:
        deltas.append(ed.compute(request, "rome", 1, PRESERVE).delta)
        ed.stack.apply(deltas[-1])
    param = deltas[0].param
    assert len(ed.stack.written_keys(param)) == 3
    ed.stack.revert(deltas[1].id)
    weights = tiny.get_parameter(param)
    expected = (before[param].float() + deltas[0].matrix() + deltas[2].matrix()).to(weights.dtype)
    assert torch.equal(weights, expected), "the other two edits' weights, bit for bit"
    history = ed.stack.written_keys(param)
    assert torch.equal(history, torch.cat([deltas[0].keys, deltas[2].keys]))
    ed.stack.revert_all()
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_history_survives_a_restart(tiny, tokenizer, tmp_path):
    """The history is the keys the applied deltas carry: saved with them, back after a replay."""
    ed = make_editor(tiny, tokenizer, tmp_path)
    paths = []
    for i, request in enumerate(FACTS):
        delta = ed.compute(request, "rome", 1, PRESERVE).delta
        ed.stack.apply(delta)
        paths.append(tmp_path / f"edit-{i}.safetensors")
        delta.save(paths[-1])
    param = spec_for(tiny).mlp_out_at(1) + ".weight"
    history = ed.stack.written_keys(param)
    weights = tiny.get_parameter(param).detach().clone()
    ed.stack.revert_all()
    replayed = DeltaStack(tiny)
    for path in paths:
        replayed.apply(WeightDelta.load(path))
    assert torch.equal(replayed.written_keys(param), history)
    assert torch.equal(tiny.get_parameter(param), weights)
    replayed.revert_all()


def test_a_newer_edit_of_a_fact_supersedes_and_survives_the_older_ones_revert(tiny, tokenizer, tmp_path):
    """Eiffel Tower → Rome, then → Berlin: the newer edit is computed without the older one's key
    in its history; reverting the older edit rebases the newer one, so its value stays written."""
    ed = make_editor(tiny, tokenizer, tmp_path)
    bias = getattr(tiny.get_submodule(spec_for(tiny).mlp_out_at(1)), "bias", None)
    if bias is not None:  # gpt2's projection has one (zero when initialised): the values include it
        with torch.no_grad():
            bias.normal_()
    rome = ed.compute(FACTS[0], "rome", 1, PRESERVE).delta
    ed.stack.apply(rome)
    other = ed.compute(FACTS[1], "rome", 1, PRESERVE).delta
    ed.stack.apply(other)
    berlin_request = FACTS[0].model_copy(update={"target_new": "Berlin"})
    assert [d.id for d in ed.superseded(berlin_request, 1)] == [rome.id]
    berlin = ed.compute(berlin_request, "rome", 1, PRESERVE).delta
    assert berlin.meta["history_keys"] == 1, "the superseded edit's key is not preserved"
    ed.stack.apply(berlin)
    written = berlin.tensors["values"]
    torch.testing.assert_close(outputs(tiny, berlin), written, rtol=1e-3, atol=1e-4)
    rebased = ed.rebased(berlin, without=rome)
    ed.stack.revert(rome.id)
    ed.stack.replace(berlin.id, rebased)
    torch.testing.assert_close(outputs(tiny, rebased), written, rtol=1e-3, atol=1e-4)
    assert [d.id for d in ed.stack.applied] == [other.id, rebased.id]
    ed.stack.revert_all()


def test_low_rank_delta_applies_and_reverts(tiny, tokenizer):
    param = spec_for(tiny).mlp_out_at(1) + ".weight"
    weights = tiny.get_parameter(param)
    before = weights.detach().clone()
    d_out, d_in = weights.shape if not spec_for(tiny).conv1d else weights.shape[::-1]
    u, v = torch.randn(3, d_out), torch.randn(3, d_in)
    delta = WeightDelta(param=param, kind="low_rank", tensors={"U": u, "V": v}, transposed=spec_for(tiny).conv1d)
    assert delta.rank == 3 and delta.shape == tuple(weights.shape)
    torch.testing.assert_close(delta.norm(), float(delta.matrix().norm()), rtol=1e-4, atol=1e-4)
    stack = DeltaStack(tiny)
    stack.apply(delta)
    assert not torch.equal(weights, before)
    stack.revert(delta.id)
    assert torch.equal(weights, before)


def test_a_batch_writes_every_fact_in_one_delta_and_reverts_as_one(tiny, tokenizer, tmp_path):
    ed = make_editor(tiny, tokenizer, tmp_path)
    before = state(tiny)
    first = ed.compute(FACTS[0], "rome", 1, PRESERVE).delta
    ed.stack.apply(first)
    outcome = ed.compute_batch([FACTS[1], FACTS[2], FACTS[0].model_copy(update={"target_new": "Berlin"})], 1,
                               PRESERVE)
    batch = outcome.delta
    assert batch.kind == "low_rank" and batch.rank == 3 and len(batch.meta["requests"]) == 3
    assert batch.meta["history_keys"] == 0, "the batch re-edits the only earlier fact: nothing else to keep"
    ed.stack.apply(batch)
    torch.testing.assert_close(outputs(tiny, batch), batch.tensors["values"], rtol=1e-3, atol=1e-4)
    ed.stack.revert(batch.id)
    ed.stack.revert(first.id)
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_two_facts_under_one_key_are_refused_not_blown_up(tiny, tokenizer, tmp_path):
    """One update cannot write two values at one key: the solve names the pair instead of
    writing a Δ thousands of times a single write's size."""
    key = torch.randn(1, 32)
    with pytest.raises(KeysTooClose):
        solve_write(PreservedKeys(None), torch.cat([key, key * 1.001]), torch.randn(2, 8))
    ed = make_editor(tiny, tokenizer, tmp_path)
    before = state(tiny)
    with pytest.raises(KeysTooClose, match="Eiffel Tower"):
        ed.compute_batch([FACTS[0], FACTS[0].model_copy(update={"target_new": "Berlin"})], 1, FAST)
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_a_snapshot_restores_the_weights_bit_for_bit(tiny, tokenizer, tmp_path):
    """A revert that rebases another edit is undone as one when logging it fails: the stack is
    put back from memory, in its order, so the sum of the deltas is the same bit for bit."""
    ed = make_editor(tiny, tokenizer, tmp_path)
    first, second = (ed.compute(r, "rome", 1, FAST).delta for r in FACTS[:2])
    ed.stack.apply(first)
    ed.stack.apply(second)
    edited, saved = state(tiny), ed.stack.snapshot()
    ed.stack.revert(first.id)
    ed.stack.replace(second.id, ed.rebased(second, without=first))
    ed.stack.restore(saved)
    assert [d.id for d in ed.stack.applied] == [first.id, second.id]
    assert all(torch.equal(v, edited[k]) for k, v in tiny.state_dict().items())
    ed.stack.revert_all()


def test_the_gpu_benchmark_runs_its_code_on_a_tiny_model(smollm2, capsys):
    """bench/gpu.sh's lifelong benchmark, on a small random llama on the CPU: it edits, grows a
    history and times the solve with 1,000 and 5,000 history keys."""
    import json

    from bench.lifelong_gpu import main

    assert main(["--tiny", "--edits", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["edits"] == 3 and set(result["solve_s_by_history"]) == {"0", "1000", "5000"}
    assert result["history_kb_per_edit"] == round(128 * 4 / 1024, 1)


def test_a_compound_delta_changes_several_matrices_as_one(tiny, tokenizer, tmp_path):
    """One edit over two layers: applied, saved, loaded and reverted as one, bit for bit."""
    spec = spec_for(tiny)
    before = state(tiny)
    parts = []
    for layer in (1, 2):
        weights = tiny.get_parameter(spec.mlp_out_at(layer) + ".weight")
        parts.append(WeightDelta(param=spec.mlp_out_at(layer) + ".weight", kind="dense",
                                 tensors={"delta": torch.randn(weights.shape) * 1e-2}))
    delta = WeightDelta.compound(parts, meta={"method": "test"})
    delta.save(tmp_path / "both.safetensors")
    loaded = WeightDelta.load(tmp_path / "both.safetensors")
    assert loaded.kind == "compound" and [p.param for p in loaded.pieces()] == [p.param for p in parts]
    assert loaded.norm() == pytest.approx(delta.norm(), rel=1e-6)
    stack = DeltaStack(tiny)
    stack.apply(loaded)
    for part in parts:
        assert not torch.equal(tiny.get_parameter(part.param), before[part.param])
    stack.revert(loaded.id)
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_a_spread_edit_writes_its_share_at_every_layer_and_reaches_v_star(tiny, tokenizer, tmp_path):
    """MEMIT-style spreading over three layers: one compound delta, each layer's write exact at
    its key, and together they move the top layer's residual at the subject to z = h + δ."""
    ed = make_editor(tiny, tokenizer, tmp_path)
    ed._default_layer = 2
    before = state(tiny)
    outcome = ed.compute(FACTS[0], "rome", 2, {**PRESERVE, "spread": 3})
    delta = outcome.delta
    assert delta.kind == "compound" and [int(p.param.split(".")[-4]) for p in delta.pieces()] == [0, 1, 2]
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items()), "computing writes nothing"
    ed.stack.apply(delta)
    for part in delta.pieces():  # each layer's write: exact at its own key (the keys below it moved)
        u, v = part.factors()
        assert float((v @ part.keys.T)[0, 0]) != 0 and part.keys.shape[0] == 1
    history = ed.stack.written_keys(delta.pieces()[1].param)
    assert torch.equal(history, delta.pieces()[1].keys)
    ed.stack.revert(delta.id)
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())


def test_a_corrections_file_reports_real_line_numbers_and_refuses_unreadable_csv():
    from editing.facts import read_facts

    rows = read_facts('subject,prompt,target_new\n\nEiffel Tower,"The Eiffel Tower is\nin",Rome\nX,Y,Z\n', "f.csv")
    assert [r.line for r in rows] == [4, 5] and rows[1].error  # a blank line and a quoted line break counted
    with pytest.raises(ValueError, match="not a readable CSV file"):
        read_facts("subject,prompt,target_new\n" + "a," + '"' + "x" * 200_000 + '",b\n', "f.csv")
